//! `volsnap restore --until TIME --datadir DIR` for PostgreSQL: the newest
//! Swift base backup that finished before TIME, extracted into DIR, and the
//! archived WAL from the base's start to past TIME fetched beside it, so
//! that PostgreSQL started on DIR replays to TIME and promotes.
//!
//! Why fetch beforehand: `restore_command` runs as the database's OS user,
//! which must not hold Swift credentials (they are in root's 0600 config).
//! This command runs as root, downloads and checks (SHA-256) every file
//! recovery will ask for into `DIR.volsnap-wal` (owned by that user, 0700),
//! and `restore_command` is `volsnap wal fetch --dir DIR.volsnap-wal %f %p`,
//! a local copy needing nothing else. It also means a gap in the archive is
//! found before anything is started, and named.
//!
//! How far to fetch: each archived segment records when PostgreSQL last
//! wrote it, so every record in it is older. Segments are fetched in order
//! from the base's start up to the first written after TIME (with
//! [`MARGIN`] for the file system's coarse clock): that one holds whatever
//! was written at TIME. Every timeline history file is fetched too, so
//! that the promotion picks a timeline no earlier restore used.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;

use crate::time::Timestamp;
use serde::Serialize;

use super::store::Store;
use super::wal::{self, Segment};
use crate::agent::swift as swift_agent;
use crate::config::{Datastore, Settings};
use crate::stream::{self, Progress};

/// A segment written this long after TIME surely holds TIME's records
/// (file times come from a clock that may lag the commit's by a tick).
const MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct Report {
    pub until: String,
    pub base: String,
    pub base_finished: String,
    pub datadir: String,
    pub wal_dir: String,
    pub first_segment: String,
    pub last_segment: String,
    pub segments_fetched: usize,
    pub history_files: usize,
    pub restore_command: String,
}

/// The base's WAL start, from its `backup_label`.
struct Label {
    start: String,
    timeline: u32,
}

fn read_label(datadir: &Path) -> Result<Label> {
    let path = datadir.join("backup_label");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut start = None;
    let mut timeline = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION:") {
            start = rest
                .split("(file ")
                .nth(1)
                .map(|f| f.trim_end_matches(')').trim().to_string());
        } else if let Some(rest) = line.strip_prefix("START TIMELINE:") {
            timeline = rest.trim().parse().ok();
        }
    }
    let start = start
        .filter(|s| wal::kind(s) == Some(wal::Kind::Segment))
        .ok_or_else(|| anyhow!("{}: no START WAL LOCATION file", path.display()))?;
    let timeline = timeline.unwrap_or_else(|| u32::from_str_radix(&start[..8], 16).unwrap_or(1));
    Ok(Label { start, timeline })
}

/// The WAL segment size: the size of the base's own segments in pg_wal.
fn segment_size(datadir: &Path) -> Result<u64> {
    let pg_wal = datadir.join("pg_wal");
    for entry in fs::read_dir(&pg_wal).with_context(|| format!("listing {}", pg_wal.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if wal::kind(&name.to_string_lossy()) == Some(wal::Kind::Segment) {
            let size = entry.metadata()?.len();
            if wal::valid_segment_size(size) {
                return Ok(size);
            }
        }
    }
    bail!(
        "{}: no WAL segment in the base backup to tell the segment size",
        pg_wal.display()
    )
}

/// A new directory, or an empty one; `false` when it existed (not ours to remove).
pub(super) fn fresh_dir(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: restore into a new or empty directory",
                    dir.display()
                );
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("{}", dir.display())),
    }
}

/// Removes what a failed restore wrote: the directories it created, or the
/// content of those it was given empty.
pub(super) fn clean(dir: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dir);
    } else if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// `DIR.volsnap-wal`, beside the data directory (not in it: a later base
/// backup of the restored server would carry it).
pub fn wal_dir_for(datadir: &Path) -> PathBuf {
    let mut name = datadir.file_name().unwrap_or_default().to_os_string();
    name.push(".volsnap-wal");
    datadir.with_file_name(name)
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
            "restore --until needs archived WAL: no [archive] section in {}",
            settings.path.display()
        )
    })?;
    if settings.datastore != Datastore::Postgresql {
        bail!("restore --until is built for datastore postgresql only so far");
    }
    if !datadir.is_absolute() {
        bail!("--datadir {}: give an absolute path", datadir.display());
    }
    let swift = swift_agent::connect(settings)?;
    let container = &settings.swift.container;

    let (base_name, meta, finished) = newest_base(settings, &swift, until)?;
    log::info!("base backup {base_name} (finished {finished})");

    let store = Store::open(settings)?;
    let listed: BTreeSet<String> = store
        .list()?
        .into_iter()
        .filter_map(|e| e.name.strip_prefix(&store.prefix).map(str::to_string))
        .collect();
    let ids = swift_agent::identities(settings, &meta, identity)?;

    let wal_dir = wal_dir_for(datadir);
    let created_data = fresh_dir(datadir)?;
    let created_wal = match fresh_dir(&wal_dir) {
        Ok(c) => c,
        Err(e) => {
            clean(datadir, created_data);
            return Err(e);
        }
    };
    let result = (|| -> Result<Report> {
        extract(
            &swift,
            container,
            &base_name,
            &meta,
            ids.as_ref(),
            datadir,
            quiet,
        )?;
        let label = read_label(datadir)?;
        let seg_size = segment_size(datadir)?;
        let start = Segment::parse(&label.start, seg_size)
            .ok_or_else(|| anyhow!("backup_label names {:?}", label.start))?;
        if start.timeline != label.timeline {
            log::warn!(
                "backup_label: timeline {} but segment {}",
                label.timeline,
                label.start
            );
        }
        let mut history = 0;
        for name in listed
            .iter()
            .filter(|n| wal::kind(n) == Some(wal::Kind::History))
        {
            let (plain, _) = store.fetch(name, ids.as_ref())?;
            write_file(&wal_dir, name, &plain)?;
            history += 1;
        }
        let (fetched, last) = fetch_chain(
            &store,
            &listed,
            datadir,
            &wal_dir,
            start,
            seg_size,
            until,
            ids.as_ref(),
        )?;
        let restore_command = restore_command(&wal_dir)?;
        write_recovery(datadir, &restore_command, until, &base_name)?;
        for dir in [datadir, wal_dir.as_path()] {
            chown_tree(dir, &archive.spool_owner)?;
        }
        Ok(Report {
            until: until.to_string(),
            base: base_name.clone(),
            base_finished: finished.to_string(),
            datadir: datadir.display().to_string(),
            wal_dir: wal_dir.display().to_string(),
            first_segment: start.name(seg_size),
            last_segment: last,
            segments_fetched: fetched,
            history_files: history,
            restore_command,
        })
    })();
    if result.is_err() {
        clean(datadir, created_data);
        clean(&wal_dir, created_wal);
    }
    result
}

/// The newest base of this host and datastore that finished before TIME: a
/// base is consistent only from its end, and recovery cannot stop before
/// that. With its metadata and when it finished.
pub(super) fn newest_base(
    settings: &Settings,
    swift: &crate::openstack::Swift,
    until: Timestamp,
) -> Result<(String, stream::BackupMeta, Timestamp)> {
    let container = &settings.swift.container;
    let mut oldest: Option<(String, Timestamp)> = None;
    for (name, listed) in swift_agent::own_backups(settings, swift)? {
        if name.created >= until {
            continue;
        }
        let meta = swift_agent::read_meta(swift, container, &listed.name)?;
        let finished = name
            .created
            .checked_add(meta.duration)
            .unwrap_or(name.created)
            // The name holds whole seconds; the run may have started up to
            // one second later.
            .checked_add(Duration::from_secs(1))
            .unwrap_or(name.created);
        oldest = Some((listed.name.clone(), finished));
        if finished <= until {
            return Ok((listed.name, meta, finished));
        }
    }
    match oldest {
        Some((name, at)) => bail!(
            "no base backup of this host finished before {until}: the earliest that \
             started before it, {name}, finished at {at}; choose a later time"
        ),
        None => bail!(
            "no base backup of this host in {container} started before {until} \
             (see `volsnap list`)"
        ),
    }
}

/// The base backup streamed through decryption, decompression and the
/// SHA-256 check into `tar -x`; tar sees the end of the stream only after
/// the check passed.
fn extract(
    swift: &crate::openstack::Swift,
    container: &str,
    name: &str,
    meta: &stream::BackupMeta,
    ids: Option<&stream::Identities>,
    datadir: &Path,
    quiet: bool,
) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "--numeric-owner", "-C"])
        .arg(datadir);
    stream_into(swift, container, name, meta, ids, quiet, tar, datadir)?;
    for leftover in ["postmaster.pid", "postmaster.opts"] {
        let _ = fs::remove_file(datadir.join(leftover));
    }
    if !datadir.join("PG_VERSION").is_file() || !datadir.join("backup_label").is_file() {
        bail!("{name} is not a pg_basebackup tar (no PG_VERSION or backup_label)");
    }
    Ok(())
}

/// Streams backup `name` into `command`'s stdin (an extractor writing into
/// `datadir`), which sees the end of the stream only after the check passed.
#[allow(clippy::too_many_arguments)]
pub(super) fn stream_into(
    swift: &crate::openstack::Swift,
    container: &str,
    name: &str,
    meta: &stream::BackupMeta,
    ids: Option<&stream::Identities>,
    quiet: bool,
    mut command: Command,
    datadir: &Path,
) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let stored = swift
        .get_object(container, name)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("downloading {container}/{name}"))?;
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut progress = Progress::new("restore", quiet);
    match stream::restore_into(stored, &mut stdin, meta, ids, &mut progress) {
        Ok(_) => {
            drop(stdin);
            let status = child.wait()?;
            if !status.success() {
                bail!(
                    "{program} of {name} into {} failed ({status})",
                    datadir.display()
                );
            }
            Ok(())
        }
        Err(e) => {
            let _ = child.kill();
            drop(stdin);
            let _ = child.wait();
            Err(e.context(format!("restore of {container}/{name} failed")))
        }
    }
}

/// Fetches the segments from `start` on until one written after `until`;
/// a segment missing from the archive (and from the base's own pg_wal) is
/// a gap, named.
#[allow(clippy::too_many_arguments)]
fn fetch_chain(
    store: &Store,
    listed: &BTreeSet<String>,
    datadir: &Path,
    wal_dir: &Path,
    start: Segment,
    seg_size: u64,
    until: Timestamp,
    ids: Option<&stream::Identities>,
) -> Result<(usize, String)> {
    let mut seg = start;
    let mut fetched = 0;
    let mut last_written: Option<(String, Timestamp)> = None;
    loop {
        let name = seg.name(seg_size);
        if listed.contains(&name) {
            let (plain, written) = store.fetch(&name, ids)?;
            if plain.len() as u64 != seg_size {
                bail!(
                    "archived segment {name} holds {} bytes, not the base's segment size {seg_size}",
                    plain.len()
                );
            }
            write_file(wal_dir, &name, &plain)?;
            fetched += 1;
            if let Some(w) = written {
                last_written = Some((name.clone(), w));
                if w > until.checked_add(MARGIN).unwrap_or(until) {
                    return Ok((fetched, name));
                }
            }
        } else if datadir.join("pg_wal").join(&name).is_file() {
            // In the base itself (pg_basebackup -X fetch): not archived
            // when archiving began after the base's start.
        } else {
            let later = listed
                .iter()
                .filter_map(|n| Segment::parse(n, seg_size))
                .filter(|s| s.timeline == seg.timeline && s.number > seg.number)
                .min();
            let reached = last_written
                .as_ref()
                .map_or("nothing archived after the base".to_string(), |(n, w)| {
                    format!("the last, {n}, was written at {w}")
                });
            match later {
                Some(next) => bail!(
                    "gap in the archived WAL between the base and {until}: {name} to {} are \
                     missing from {}/{} (the archive goes on at {}); recovery cannot cross it",
                    Segment {
                        timeline: next.timeline,
                        number: next.number - 1
                    }
                    .name(seg_size),
                    store.container,
                    store.prefix,
                    next.name(seg_size)
                ),
                None => bail!(
                    "the archived WAL does not reach {until} yet: {name} is not archived \
                     ({reached}); wait for archiving (archive_timeout) or choose an earlier time"
                ),
            }
        }
        seg = seg.next();
    }
}

pub(super) fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A shell word in single quotes.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn restore_command(wal_dir: &Path) -> Result<String> {
    let exe = std::env::current_exe().context("finding volsnap's own path")?;
    Ok(format!(
        "{} wal fetch --dir {} %f %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&wal_dir.display().to_string())
    ))
}

/// A PostgreSQL string literal.
fn pg_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn write_recovery(
    datadir: &Path,
    restore_command: &str,
    until: Timestamp,
    base: &str,
) -> Result<()> {
    let auto = datadir.join("postgresql.auto.conf");
    let mut text = fs::read_to_string(&auto).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // PostgreSQL's own form: `2026-12-03 18:00:00.250000+00`.
    let target = until.rfc3339(6).replacen('T', " ", 1).replace('Z', "+00");
    text += &format!(
        "# volsnap restore --until {until} from {base}: recovery to that time, then promotion.\n\
         # These may go once the server has promoted (the .volsnap-wal directory too).\n\
         restore_command = {}\n\
         recovery_target_time = {}\n\
         recovery_target_inclusive = on\n\
         recovery_target_action = 'promote'\n\
         recovery_target_timeline = 'current'\n",
        pg_quote(restore_command),
        pg_quote(&target)
    );
    fs::write(&auto, text).with_context(|| format!("writing {}", auto.display()))?;
    fs::write(datadir.join("recovery.signal"), "")
        .with_context(|| format!("writing {}/recovery.signal", datadir.display()))?;
    Ok(())
}

pub(super) fn chown_tree(dir: &Path, owner: &str) -> Result<()> {
    let status = Command::new("chown")
        .args(["-R", "--no-dereference"])
        .arg(format!("{owner}:"))
        .arg(dir)
        .status()
        .context("running chown")?;
    if !status.success() {
        bail!("chown -R {owner}: {} failed ({status})", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_quoting() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("backup_label"),
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
             CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n",
        )
        .unwrap();
        let label = read_label(dir.path()).unwrap();
        assert_eq!(label.start, "000000010000000000000002");
        assert_eq!(label.timeline, 1);
        assert_eq!(pg_quote("it's"), "'it''s'");
        assert_eq!(shell_quote("/a b/c'd"), r"'/a b/c'\''d'");
        assert_eq!(
            wal_dir_for(Path::new("/srv/pg/main")),
            Path::new("/srv/pg/main.volsnap-wal")
        );
    }
}
