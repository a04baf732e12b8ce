//! `volsnap restore --until TIME --datadir DIR` for MariaDB: a base in DIR
//! — the newest Swift base backup that finished before TIME, extracted
//! into DIR and prepared (`mbstream -x`, `mariadb-backup --prepare`, as the
//! hook's restore does; `from_swift`), or with `--snapshot ID` the data
//! directory already there on a volume made of that Cinder snapshot
//! (`from_snapshot`) — then the archived binary logs from the base's
//! position (mariadb-backup's binlog info file, or the snapshot's
//! `binlog_file`/`binlog_pos`) replayed up to TIME (`fetch_and_replay`,
//! one path for both bases, and [`super::binlog_replay`]). DIR is then a
//! data directory to start MariaDB on, owned by `archive.spool_owner`
//! (mysql).
//!
//! Before anything is downloaded, the archive is checked from the file the
//! base recorded as being written when it started (`binlog_start_file`):
//! a missing file is a gap, named, and an archive whose last file was
//! closed before TIME does not reach it yet (unless the service marked
//! the server quiet since: [`quiet_until`]). The same check runs again
//! from the base's exact position once the base is extracted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::binlog::{self, Name, Position};
use super::pitr::{
    archive_identities, chown_tree, clean, fresh_dir, newest_base, stream_into, write_file,
};
use super::snapshot_base;
use super::store::{Store, WRITTEN_KEY};
use crate::agent::swift::catalog as swift_agent;
use crate::config::Settings;
use crate::stream::Identities;
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
    /// `swift` (a mariadb-backup) or `cinder-snapshot`.
    pub base_kind: &'static str,
    /// The backup's name, or the snapshot's id.
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
    snapshot: Option<&str>,
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
    let owner = &archive.spool_owner;
    match snapshot {
        Some(id) => from_snapshot(settings, owner, until, datadir, id, identity),
        None => from_swift(settings, owner, until, datadir, identity, quiet),
    }
}

/// A Swift base: the newest finished before TIME, extracted into a new
/// data directory and prepared, replayed from mariadb-backup's position.
fn from_swift(
    settings: &Settings,
    owner: &str,
    until: Timestamp,
    datadir: &Path,
    identity: Option<&Path>,
    quiet: bool,
) -> Result<Report> {
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
        // The InnoDB options the base was taken with (page size, log size…).
        let options = datadir.join("backup-my.cnf");
        fetch_and_replay(
            &Replay {
                store: &store,
                ids: ids.as_ref(),
                datadir,
                binlog_dir: &binlog_dir,
                position: &position,
                until,
                owner,
                options: options.is_file().then_some(options.as_path()),
            },
            Base {
                kind: "swift",
                name: base_name.clone(),
                finished,
            },
        )
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

/// The hook's record of where the binary log stood under the freeze's
/// lock (commits blocked): the snapshot holds every commit before it and
/// none after.
const BINLOG_FILE: &str = "binlog_file";
const BINLOG_POS: &str = "binlog_pos";

/// A Cinder snapshot base: the data directory on a volume made of snapshot
/// `id`, as the freeze left it (never shut down), replayed from the
/// position the hook recorded. Only archived copies of binary logs are
/// replayed, never the snapshot's own (its last file is cut at the
/// freeze). A snapshot has no backup-my.cnf: the temporary server reads
/// no option file, so the data must suit MariaDB's defaults for what is
/// fixed at creation (`innodb_page_size`). Every refusal comes before DIR
/// is written.
fn from_snapshot(
    settings: &Settings,
    owner: &str,
    until: Timestamp,
    datadir: &Path,
    id: &str,
    identity: Option<&Path>,
) -> Result<Report> {
    check_datadir(datadir, id)?;
    let base = snapshot_base::verify(settings, id, until, &[BINLOG_FILE, BINLOG_POS])?;
    let position = snapshot_position(&base.metadata).with_context(|| format!("snapshot {id}"))?;
    check_not_running(datadir)?;
    check_own_binlog(datadir, id, &position)?;
    log::info!(
        "base: snapshot {id} (taken {}), replay from {} {}",
        base.created,
        position.file,
        position.pos
    );
    let store = Store::open(settings)?;
    let ids = archive_identities(settings, identity)?;
    let binlog_dir = binlog_dir_for(datadir);
    let created_binlog = fresh_dir(&binlog_dir)?;
    let result = fetch_and_replay(
        &Replay {
            store: &store,
            ids: ids.as_ref(),
            datadir,
            binlog_dir: &binlog_dir,
            position: &position,
            until,
            owner,
            options: None,
        },
        Base {
            kind: "cinder-snapshot",
            name: base.id.clone(),
            finished: base.consistent_from,
        },
    );
    clean(&binlog_dir, result.is_ok() || created_binlog);
    result
}

fn snapshot_position(meta: &BTreeMap<String, String>) -> Result<Position> {
    let file = Name::parse(&meta[BINLOG_FILE]).ok_or_else(|| {
        anyhow!(
            "binlog_file {:?} is not a binary log name",
            meta[BINLOG_FILE]
        )
    })?;
    let pos = meta[BINLOG_POS]
        .parse()
        .map_err(|_| anyhow!("binlog_pos {:?} is not a position", meta[BINLOG_POS]))?;
    Ok(Position { file, pos })
}

/// A MariaDB data directory: the system schema and an engine's own files.
fn check_datadir(datadir: &Path, id: &str) -> Result<()> {
    let engine = ["ibdata1", "aria_log_control"]
        .iter()
        .any(|f| datadir.join(f).is_file());
    if !datadir.join("mysql").is_dir() || !engine {
        bail!(
            "--snapshot {id}: {} is not a MariaDB data directory (no mysql/ with ibdata1 or \
             aria_log_control): make a volume of the snapshot, mount it, and give the data \
             directory on it",
            datadir.display()
        );
    }
    Ok(())
}

/// A server running on DIR has it as its working directory (mariadbd
/// changes into its data directory): its pid file may be anywhere, and the
/// snapshot's copy of it names the source server's pid.
fn check_not_running(datadir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let here = fs::metadata(datadir)?;
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cwd) = fs::metadata(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        if (cwd.dev(), cwd.ino()) != (here.dev(), here.ino()) {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if ["mariadbd", "mysqld"].contains(&comm) {
            bail!(
                "{comm} (pid {pid}) is running on {}: a restore needs the data of a snapshot, \
                 not a live server's",
                datadir.display()
            );
        }
    }
    Ok(())
}

/// The snapshot's own binary log, when it is in DIR: it reaches the
/// recorded position and no later file exists. Else DIR's data went on
/// past the snapshot (another snapshot's, or a server ran on it), and the
/// replay from the position would apply transactions twice.
fn check_own_binlog(datadir: &Path, id: &str, at: &Position) -> Result<()> {
    let later: Vec<Name> = fs::read_dir(datadir)
        .with_context(|| format!("listing {}", datadir.display()))?
        .flatten()
        .filter_map(|e| Name::parse(&e.file_name().to_string_lossy()))
        .filter(|n| n.base == at.file.base && n.number > at.file.number)
        .collect();
    let not_its = |why: String| {
        anyhow!(
            "{}: {why}: it is not snapshot {id}'s data (a later snapshot's, or MariaDB ran on \
             it since); make a new volume of snapshot {id}",
            datadir.display()
        )
    };
    if let Some(n) = later.iter().max() {
        return Err(not_its(format!(
            "it holds {n}, a binary log after snapshot {id}'s {}",
            at.file
        )));
    }
    match fs::metadata(datadir.join(at.file.to_string())) {
        Ok(m) if m.len() < at.pos => Err(not_its(format!(
            "its {} ends at {}, before snapshot {id}'s position {}",
            at.file,
            m.len(),
            at.pos
        ))),
        Ok(_) => Ok(()),
        Err(_) => {
            // The binary log lives elsewhere (log_bin with a directory).
            log::info!(
                "{}: no {} in it; the data cannot be checked against snapshot {id}'s position",
                datadir.display(),
                at.file
            );
            Ok(())
        }
    }
}

/// The base whichever: what the report says of it.
struct Base {
    kind: &'static str,
    name: String,
    finished: Timestamp,
}

/// The replay to run on a data directory holding a base.
struct Replay<'a> {
    store: &'a Store,
    ids: Option<&'a Identities>,
    datadir: &'a Path,
    binlog_dir: &'a Path,
    position: &'a Position,
    until: Timestamp,
    owner: &'a str,
    options: Option<&'a Path>,
}

/// The one path of both bases: the archived files from the base's
/// position to past TIME (a gap or a TIME not archived yet refused,
/// named) fetched into the binlog directory, DIR handed to the database's
/// OS user, and the replay. DIR is written only after the fetch.
fn fetch_and_replay(r: &Replay, base: Base) -> Result<Report> {
    let files = plan(r.store, &r.position.file, r.until)?;
    for name in &files {
        let (plain, _) = r.store.fetch(name, r.ids)?;
        write_file(r.binlog_dir, name, &plain)?;
    }
    chown_tree(r.datadir, r.owner)?;
    let replayed = super::binlog_replay::replay(
        r.datadir,
        r.position,
        r.binlog_dir,
        r.until,
        r.owner,
        r.options,
    )?;
    Ok(Report {
        until: r.until.to_string(),
        base_kind: base.kind,
        base: base.name,
        base_finished: base.finished.to_string(),
        datadir: r.datadir.display().to_string(),
        start_file: r.position.file.to_string(),
        start_position: r.position.pos,
        last_file: files.last().cloned().unwrap_or_default(),
        binlogs_fetched: files.len(),
        stop_datetime: replayed.stop_datetime,
        replay_seconds: replayed.seconds,
        owner: r.owner.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datadir_is_mysql_and_an_engine_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_datadir(dir.path(), "S").unwrap_err().to_string();
        assert!(err.contains("is not a MariaDB data directory"), "{err}");
        fs::create_dir(dir.path().join("mysql")).unwrap();
        assert!(check_datadir(dir.path(), "S").is_err());
        fs::write(dir.path().join("aria_log_control"), b"x").unwrap();
        check_datadir(dir.path(), "S").unwrap();
    }

    #[test]
    fn the_snapshots_binlog_reaches_its_position_and_none_follows() {
        let dir = tempfile::tempdir().unwrap();
        let at = Position {
            file: Name::parse("binlog.000003").unwrap(),
            pos: 10,
        };
        // The binary log elsewhere: nothing to check.
        check_own_binlog(dir.path(), "S", &at).unwrap();
        fs::write(dir.path().join("binlog.000002"), b"old").unwrap();
        fs::write(dir.path().join("binlog.000003"), b"short").unwrap();
        let err = check_own_binlog(dir.path(), "S", &at)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ends at 5, before snapshot S's position 10"),
            "{err}"
        );
        fs::write(dir.path().join("binlog.000003"), [0u8; 10]).unwrap();
        check_own_binlog(dir.path(), "S", &at).unwrap();
        fs::write(dir.path().join("binlog.000004"), b"").unwrap();
        let err = check_own_binlog(dir.path(), "S", &at)
            .unwrap_err()
            .to_string();
        assert!(err.contains("it holds binlog.000004"), "{err}");
        let meta = BTreeMap::from([
            (BINLOG_FILE.to_string(), "binlog.000003".to_string()),
            (BINLOG_POS.to_string(), "10".to_string()),
        ]);
        assert_eq!(snapshot_position(&meta).unwrap(), at);
    }
}
