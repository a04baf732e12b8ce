//! The runtime directory (`/run/volsnap`): the run lock, and the record of
//! what is frozen, written before the first FIFREEZE so that `volsnap thaw`
//! (or a person) can repair by hand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::exit::{Exit, LOCKED};

pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create runtime directory {}", dir.display()))
}

/// The one-run-at-a-time lock, held until dropped. The file says who holds
/// it: `PID [RUN]`, the run being the name a backup gives its snapshots, so
/// that a later run can tell a live run's snapshots from a dead one's.
pub struct RunLock {
    lock: Flock<File>,
    path: PathBuf,
}

impl RunLock {
    /// Takes `DIR/lock` or fails at once with exit 75 naming the holder.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        ensure_dir(dir)?;
        let path = lock_path(dir);
        let file = open_lock(&path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder.split_whitespace().next().unwrap_or("unknown");
                return Err(Exit::new(
                    LOCKED,
                    format!("another volsnap run holds {} (pid {pid})", path.display()),
                )
                .into());
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        Ok(RunLock { lock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the run that holds the lock (see [`run_is_live`]).
    pub fn name_run(&mut self, run: &str) -> Result<()> {
        self.lock.set_len(0)?;
        self.lock.rewind()?;
        writeln!(self.lock, "{} {run}", std::process::id())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The descriptor the lock is held by: the watchdog keeps a copy, so the
    /// lock outlives a killed run until its watchdog has thawed and released
    /// the database.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.lock.as_raw_fd()
    }
}

/// The pid of the run holding `DIR/lock`, if one does; takes nothing
/// (what `backup --dry-run` reports).
pub fn lock_holder(dir: &Path) -> Option<u32> {
    let path = lock_path(dir);
    if !is_locked(&path) {
        return None;
    }
    std::fs::read_to_string(&path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether anyone holds a flock on `path`, read from `/proc/locks` so that
/// asking never takes the lock, not even for an instant (a probe would turn
/// a run starting at that moment away with 75).
fn is_locked(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let dev = meta.dev();
    // `FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`, major and minor in hex.
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    locks.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str())
    })
}

/// The run lock of a runtime dir (recorded in a run's snapshots).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Whether `run` is still going: the lock file at `lock_path` names it as its
/// holder and somebody (the run, or its watchdog) holds the lock. A run that
/// died released its lock; a later run renamed the holder.
pub fn run_is_live(lock_path: &Path, run: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(lock_path) else {
        return false;
    };
    if text.split_whitespace().nth(1) != Some(run) {
        return false;
    }
    is_locked(lock_path)
}

/// What a run froze, and how to undo it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FrozenRecord {
    pub pid: u32,
    pub config: PathBuf,
    pub mounts: Vec<PathBuf>,
    pub started_unix_ms: u128,
}

const FROZEN: &str = "frozen.json";

pub fn write_frozen(dir: &Path, record: &FrozenRecord) -> Result<()> {
    let path = dir.join(FROZEN);
    let tmp = dir.join(".frozen.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_frozen(dir: &Path) -> Result<Option<FrozenRecord>> {
    let path = dir.join(FROZEN);
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("cannot parse {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn clear_frozen(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(FROZEN)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.join(FROZEN).display()))
        }
        _ => Ok(()),
    }
}

/// qemu-ga's quiesce: `volsnap hook freeze` (qemu-ga's fsfreeze hook) left
/// the datastore hook's lock held for a snapshot that is not volsnap's (Nova's
/// quiesced snapshot). Written once that freeze succeeded, removed by `volsnap
/// hook thaw`; a backup refuses to start while it stands, since its hook
/// `freeze` would take the database over from qemu-ga's. `until_unix_ms` is
/// when the hook's lock releases by itself if the thaw never comes: after it
/// the record is stale.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuiescedRecord {
    pub since_unix_ms: u128,
    pub until_unix_ms: u128,
}

const QUIESCED: &str = "fsfreeze-hook.quiesced";

pub fn write_quiesced(dir: &Path, record: &QuiescedRecord) -> Result<()> {
    ensure_dir(dir)?;
    let path = dir.join(QUIESCED);
    let tmp = dir.join(".fsfreeze-hook.quiesced.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// The record if it stands (not stale); a stale one is removed.
pub fn read_quiesced(dir: &Path) -> Result<Option<QuiescedRecord>> {
    let path = dir.join(QUIESCED);
    let record: QuiescedRecord = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("cannot parse {} (remove it)", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if record.until_unix_ms <= now_unix_ms() {
        clear_quiesced(dir)?;
        return Ok(None);
    }
    Ok(Some(record))
}

pub fn clear_quiesced(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(QUIESCED)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.join(QUIESCED).display()))
        }
        _ => Ok(()),
    }
}

/// What a watchdog did for a run, kept so that the next run can say who
/// thawed the run whose snapshots it removes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WatchdogRecord {
    pub run: String,
    pub fired_unix_ms: u128,
    pub summary: String,
}

const WATCHDOG_RECORD: &str = "watchdog.last.json";

pub fn write_watchdog_record(dir: &Path, record: &WatchdogRecord) {
    let tmp = dir.join(".watchdog.last.json.tmp");
    if let Ok(bytes) = serde_json::to_vec(record) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(WATCHDOG_RECORD));
        }
    }
}

pub fn read_watchdog_record(dir: &Path) -> Option<WatchdogRecord> {
    serde_json::from_slice(&std::fs::read(dir.join(WATCHDOG_RECORD)).ok()?).ok()
}

/// Appends one line to `DIR/watchdog.log`: what the watchdog did and when.
pub fn note_watchdog(dir: &Path, line: &str) {
    let path = dir.join("watchdog.log");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        let _ = writeln!(f, "{stamp} {line}");
    }
}

pub fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
