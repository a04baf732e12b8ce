//! `volsnap restore --until TIME --datadir DIR` for PostgreSQL: a base in
//! DIR — the newest Swift base backup that finished before TIME, extracted
//! there (`from_swift`), or with `--snapshot ID` the data directory
//! already there on a volume made of that Cinder snapshot
//! (`from_snapshot`) — and the archived WAL from the base's start to past
//! TIME fetched beside it (`set_up_recovery`, one path for both bases),
//! so that PostgreSQL started on DIR replays to TIME and promotes.
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

use super::snapshot_base;
use super::store::Store;
use super::wal::{self, Segment};
use crate::agent::swift::catalog as swift_agent;
use crate::config::{Datastore, Settings};
use crate::stream::{self, Progress};

/// A segment written this long after TIME surely holds TIME's records
/// (file times come from a clock that may lag the commit's by a tick).
const MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct Report {
    pub until: String,
    /// `swift` (a base backup) or `cinder-snapshot`.
    pub base_kind: &'static str,
    /// The backup's name, or the snapshot's id.
    pub base: String,
    /// When the base's state was reached: recovery can stop no earlier.
    pub base_finished: String,
    pub datadir: String,
    pub wal_dir: String,
    #[serde(flatten)]
    pub recovery: Fetched,
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
    snapshot: Option<&str>,
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
    let holds_data = datadir.join("PG_VERSION").is_file();
    match (snapshot, holds_data) {
        (Some(id), true) => from_snapshot(settings, &archive.spool_owner, until, datadir, id, identity),
        (Some(id), false) => bail!(
            "--snapshot {id}: {} is not a PostgreSQL data directory (no PG_VERSION): make a \
             volume of the snapshot, mount it, and give the data directory on it",
            datadir.display()
        ),
        (None, true) => bail!(
            "{} holds a PostgreSQL data directory: to recover it to {until}, give --snapshot ID, \
             the Cinder snapshot its volume was made from{}; a Swift base needs a new or empty directory",
            datadir.display(),
            snapshot_base::older(settings, until)
        ),
        (None, false) => from_swift(settings, &archive.spool_owner, until, datadir, identity, quiet),
    }
}

/// The archive as a restore reads it: what it holds, and the key to it.
struct Archive {
    store: Store,
    listed: BTreeSet<String>,
    ids: Option<stream::Identities>,
}

fn open_archive(settings: &Settings, identity: Option<&Path>) -> Result<Archive> {
    let store = Store::open(settings)?;
    let listed = store
        .list()?
        .into_iter()
        .filter_map(|e| e.name.strip_prefix(&store.prefix).map(str::to_string))
        .collect();
    let ids = archive_identities(settings, identity)?;
    Ok(Archive { store, listed, ids })
}

/// The key to archived files, which are encrypted to [swift]'s recipients
/// when it has any: `--identity`, else `swift.age_identity_file`.
pub(super) fn archive_identities(
    settings: &Settings,
    identity: Option<&Path>,
) -> Result<Option<stream::Identities>> {
    match identity.or(settings.swift.age_identity_file.as_deref()) {
        Some(p) => Ok(Some(stream::Identities::from_file(p)?)),
        None => Ok(None),
    }
}

/// A Swift base: the newest finished before TIME, extracted into a new
/// data directory, replay from its `backup_label`'s start.
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

    let archive = open_archive(settings, identity)?;
    let base_ids = swift_agent::identities(settings, &meta, identity)?;
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
            base_ids.as_ref(),
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
        // pg_basebackup -X fetch put complete segments in its pg_wal.
        let base_wal = datadir.join("pg_wal");
        let recovery = set_up_recovery(
            &archive,
            &Recovery {
                datadir,
                wal_dir: &wal_dir,
                start,
                seg_size,
                complete_in_base: Some(&base_wal),
                until,
                base: &base_name,
                owner,
            },
        )?;
        Ok(Report {
            until: until.to_string(),
            base_kind: "swift",
            base: base_name.clone(),
            base_finished: finished.to_string(),
            datadir: datadir.display().to_string(),
            wal_dir: wal_dir.display().to_string(),
            recovery,
        })
    })();
    if result.is_err() {
        clean(datadir, created_data);
        clean(&wal_dir, created_wal);
    }
    result
}

/// A Cinder snapshot base: the data directory on a volume made of snapshot
/// `id`, as the freeze left it (never shut down). PostgreSQL started on it
/// with `recovery.signal` first replays, as crash recovery, the WAL its own
/// pg_wal holds (up to the freeze), then enters archive recovery and asks
/// `restore_command` for the rest: the archived copy of a segment wins over
/// the one in pg_wal (the snapshot's last segment is cut at the freeze, and
/// later names there are recycled segments with old content), which is
/// only read for a file restore_command does not have.
fn from_snapshot(
    settings: &Settings,
    owner: &str,
    until: Timestamp,
    datadir: &Path,
    id: &str,
    identity: Option<&Path>,
) -> Result<Report> {
    let base = snapshot_base::verify(settings, id, until, &[WAL_LSN])?;
    let recorded = parse_lsn(&base.metadata[WAL_LSN]).ok_or_else(|| {
        anyhow!(
            "snapshot {id}: wal_lsn {:?} is not an LSN",
            base.metadata[WAL_LSN]
        )
    })?;
    check_own_files(datadir)?;
    check_not_running(datadir)?;
    let control = controldata(settings, datadir)?;
    if !LIVE_STATES.contains(&control.state.as_str()) {
        bail!(
            "{}: cluster state {:?}, not a snapshot's (\"in production\"): PostgreSQL ran on it \
             since the snapshot; make a new volume of snapshot {id}",
            datadir.display(),
            control.state
        );
    }
    // The image's latest checkpoint is the hook's CHECKPOINT (or an older
    // one), recorded before the freeze: a later one means this data is
    // newer than snapshot `id` (another snapshot's, or a server ran on
    // it), and recovery could stop before its own state. An older
    // snapshot's data is safe: replay starts at its own checkpoint. (A
    // checkpoint PostgreSQL itself completed between the hook's and the
    // freeze is refused too: rare, and on the safe side.)
    if control.checkpoint > recorded {
        bail!(
            "{}: its latest checkpoint {} is after snapshot {id}'s wal_lsn {}: it is not that \
             snapshot's data (a later snapshot's, or PostgreSQL ran on it since)",
            datadir.display(),
            format_lsn(control.checkpoint),
            base.metadata[WAL_LSN]
        );
    }
    let start = Segment::parse(&control.redo_file, control.seg_size).ok_or_else(|| {
        anyhow!(
            "pg_controldata: REDO WAL file {:?} for {}-byte segments",
            control.redo_file,
            control.seg_size
        )
    })?;
    log::info!(
        "base: snapshot {id} (taken {}), replay from {} (checkpoint REDO)",
        base.created,
        control.redo_file
    );
    let archive = open_archive(settings, identity)?;
    let wal_dir = wal_dir_for(datadir);
    let created_wal = fresh_dir(&wal_dir)?;
    let result = (|| -> Result<Report> {
        let recovery = set_up_recovery(
            &archive,
            &Recovery {
                datadir,
                wal_dir: &wal_dir,
                start,
                seg_size: control.seg_size,
                complete_in_base: None,
                until,
                base: &format!("snapshot {id}"),
                owner,
            },
        )?;
        Ok(Report {
            until: until.to_string(),
            base_kind: "cinder-snapshot",
            base: base.id.clone(),
            base_finished: base.consistent_from.to_string(),
            datadir: datadir.display().to_string(),
            wal_dir: wal_dir.display().to_string(),
            recovery,
        })
    })();
    if result.is_err() {
        clean(&wal_dir, created_wal);
    }
    result
}

/// The hook's record of where the WAL stood at the freeze.
const WAL_LSN: &str = "wal_lsn";

/// What `pg_controldata` says of a data directory a running server left:
/// a primary's, or a standby's.
const LIVE_STATES: &[&str] = &["in production", "in archive recovery", "in crash recovery"];

/// What `pg_controldata` tells of the data directory.
#[derive(Debug, PartialEq, Eq)]
struct Control {
    state: String,
    checkpoint: u64,
    redo_file: String,
    seg_size: u64,
}

fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_controldata(text: &str) -> Result<Control> {
    let field = |name: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .ok_or_else(|| anyhow!("pg_controldata printed no {name:?}"))
    };
    let checkpoint = field("Latest checkpoint location")?;
    let seg_size = field("Bytes per WAL segment")?;
    Ok(Control {
        state: field("Database cluster state")?.to_string(),
        checkpoint: parse_lsn(checkpoint)
            .ok_or_else(|| anyhow!("pg_controldata: checkpoint location {checkpoint:?}"))?,
        redo_file: field("Latest checkpoint's REDO WAL file")?.to_string(),
        seg_size: seg_size
            .parse()
            .ok()
            .filter(|s| wal::valid_segment_size(*s))
            .ok_or_else(|| anyhow!("pg_controldata: WAL segment size {seg_size:?}"))?,
    })
}

/// `pg_controldata` of the version the data directory is (Debian's
/// layout), or of `VOLSNAP_PG_BINDIR` in `[hooks.env]`, or on PATH.
fn controldata(settings: &Settings, datadir: &Path) -> Result<Control> {
    let version = fs::read_to_string(datadir.join("PG_VERSION")).unwrap_or_default();
    let program = match settings.hooks.env.get("VOLSNAP_PG_BINDIR") {
        Some(dir) if !dir.is_empty() => Path::new(dir.expose()).join("pg_controldata"),
        _ => {
            let debian = Path::new("/usr/lib/postgresql")
                .join(version.trim())
                .join("bin/pg_controldata");
            if debian.is_file() {
                debian
            } else {
                PathBuf::from("pg_controldata")
            }
        }
    };
    let out = Command::new(&program)
        .arg(datadir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {}: {}",
            program.display(),
            datadir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_controldata(&String::from_utf8_lossy(&out.stdout))
}

/// Parts of a data directory a snapshot's volume may not hold: pg_wal or
/// tablespaces elsewhere may be the source server's files, which recovery
/// would read and write.
fn check_own_files(datadir: &Path) -> Result<()> {
    let pg_wal = datadir.join("pg_wal");
    if let Ok(target) = fs::read_link(&pg_wal) {
        bail!(
            "{}: pg_wal is a link to {}: volsnap cannot tell that it holds this snapshot's \
             WAL and not the source server's; a snapshot base needs pg_wal inside the data directory",
            datadir.display(),
            target.display()
        );
    }
    let tblspc = datadir.join("pg_tblspc");
    if let Some(entry) = fs::read_dir(&tblspc).ok().and_then(|mut d| d.next()) {
        bail!(
            "{}: tablespace {} lives outside the data directory (perhaps the source server's); \
             a snapshot base needs a cluster without tablespaces",
            datadir.display(),
            entry?.file_name().to_string_lossy()
        );
    }
    Ok(())
}

/// The snapshot carries its server's `postmaster.pid`, whose pid may well
/// be alive (the source server, on this host); that is fine unless the
/// process runs on this very directory: then it is a live server's.
fn check_not_running(datadir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(text) = fs::read_to_string(datadir.join("postmaster.pid")) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    let here = fs::metadata(datadir)?;
    if let Ok(cwd) = fs::metadata(format!("/proc/{pid}/cwd")) {
        if (cwd.dev(), cwd.ino()) == (here.dev(), here.ino()) {
            bail!(
                "PostgreSQL (pid {pid}) is running on {}: a restore needs the data of a \
                 snapshot, not a live server's",
                datadir.display()
            );
        }
    }
    Ok(())
}

/// A base's pid files are stale (the snapshot's names the source server's
/// pid, maybe alive on this host): PostgreSQL would refuse to start.
fn remove_stale_pid(datadir: &Path) -> Result<()> {
    for leftover in ["postmaster.pid", "postmaster.opts"] {
        match fs::remove_file(datadir.join(leftover)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {leftover}")),
        }
    }
    Ok(())
}

/// Recovery to set up on a data directory holding a base, whichever.
struct Recovery<'a> {
    datadir: &'a Path,
    wal_dir: &'a Path,
    /// The segment replay starts in.
    start: Segment,
    seg_size: u64,
    /// Where the base holds complete segments the archive may lack
    /// (pg_basebackup's); `None` when what the base holds may be cut.
    complete_in_base: Option<&'a Path>,
    until: Timestamp,
    /// Named in the settings' comment.
    base: &'a str,
    owner: &'a str,
}

/// What was fetched and set.
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub first_segment: String,
    pub last_segment: String,
    pub segments_fetched: usize,
    pub history_files: usize,
    pub restore_command: String,
}

/// The one path of both bases: every timeline history file and the
/// segments from the start past TIME into the WAL directory (a gap or a
/// TIME not archived yet refused, named), the recovery settings, and the
/// ownership PostgreSQL needs. The data directory is written last.
fn set_up_recovery(archive: &Archive, r: &Recovery) -> Result<Fetched> {
    let mut history = 0;
    for name in archive
        .listed
        .iter()
        .filter(|n| wal::kind(n) == Some(wal::Kind::History))
    {
        let (plain, _) = archive.store.fetch(name, archive.ids.as_ref())?;
        write_file(r.wal_dir, name, &plain)?;
        history += 1;
    }
    let (fetched, last) = fetch_chain(archive, r)?;
    let restore_command = restore_command(r.wal_dir)?;
    chown_tree(r.wal_dir, r.owner)?;
    remove_stale_pid(r.datadir)?;
    write_recovery(r.datadir, &restore_command, r.until, r.base)?;
    chown_tree(r.datadir, r.owner)?;
    Ok(Fetched {
        first_segment: r.start.name(r.seg_size),
        last_segment: last,
        segments_fetched: fetched,
        history_files: history,
        restore_command,
    })
}

/// When a Swift base backup finished, the moment it is consistent from:
/// its name's time plus its duration, plus a second because the name holds
/// whole seconds and the run may have started up to one second later.
pub(super) fn base_finished(created: Timestamp, meta: &stream::BackupMeta) -> Timestamp {
    created
        .checked_add(meta.duration)
        .and_then(|t| t.checked_add(Duration::from_secs(1)))
        .unwrap_or(created)
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
        let finished = base_finished(name.created, &meta);
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
        .download(container, name)
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
                    "{program} -x of {name} into {} failed ({status})",
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

/// Fetches the segments from the start on until one written after TIME;
/// a segment missing from the archive (and not complete in the base) is a
/// gap, named, or the end of what is archived.
fn fetch_chain(archive: &Archive, r: &Recovery) -> Result<(usize, String)> {
    let (store, listed, seg_size, until) = (&archive.store, &archive.listed, r.seg_size, r.until);
    let mut seg = r.start;
    let mut fetched = 0;
    let mut last_written: Option<(String, Timestamp)> = None;
    loop {
        let name = seg.name(seg_size);
        if listed.contains(&name) {
            let (plain, written) = store.fetch(&name, archive.ids.as_ref())?;
            if plain.len() as u64 != seg_size {
                bail!(
                    "archived segment {name} holds {} bytes, not the base's segment size {seg_size}",
                    plain.len()
                );
            }
            write_file(r.wal_dir, &name, &plain)?;
            fetched += 1;
            if let Some(w) = written {
                last_written = Some((name.clone(), w));
                if w > until.checked_add(MARGIN).unwrap_or(until) {
                    return Ok((fetched, name));
                }
            }
        } else if r
            .complete_in_base
            .is_some_and(|dir| dir.join(&name).is_file())
        {
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

    #[test]
    fn controldata_and_lsns() {
        assert_eq!(parse_lsn("0/1500718"), Some(0x1500718));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1a << 32) | 0xff));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("01500718"), None);
        assert_eq!(format_lsn(0x1a_0000_00ff), "1A/FF");
        // pg_controldata 15 with LC_ALL=C, as a snapshot of a running server leaves it.
        let text = "pg_control version number:            1300\n\
             Database cluster state:               in production\n\
             Latest checkpoint location:           0/3000060\n\
             Latest checkpoint's REDO location:    0/3000028\n\
             Latest checkpoint's REDO WAL file:    000000010000000000000003\n\
             Latest checkpoint's TimeLineID:       1\n\
             Bytes per WAL segment:                16777216\n";
        assert_eq!(
            parse_controldata(text).unwrap(),
            Control {
                state: "in production".into(),
                checkpoint: 0x3000060,
                redo_file: "000000010000000000000003".into(),
                seg_size: 16 << 20,
            }
        );
        let err = parse_controldata(&text.replace("Bytes per WAL segment", "x")).unwrap_err();
        assert!(err.to_string().contains("Bytes per WAL segment"), "{err}");
    }
}
