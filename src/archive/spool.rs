//! The spool: the hand-over between `volsnap wal push`, which PostgreSQL
//! runs as its OS user from `archive_command`, and the root `volsnap
//! archive` service that ships to Swift.
//!
//! The push needs no credential and reads no config: it copies the WAL file
//! into the spool atomically (a temporary file, fsync, rename, fsync of the
//! directory), keeping the file's modification time — when PostgreSQL last
//! wrote to it, so every record in it is older — which the service records
//! with the object and a restore uses to know how far a segment reaches.
//! Only when the push returns 0 may PostgreSQL recycle the segment, and by
//! then the copy is on disk. Only the database's OS user and root can write
//! the spool (owned by that user, mode 0700); the service opens nothing but
//! regular files with WAL names, never through a symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use super::wal;

/// A temporary file older than this was left by a killed push.
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Copied into the spool.
    Spooled,
    /// The spool held the same bytes under that name already (PostgreSQL
    /// archives a segment again when it crashed before noting it was done).
    AlreadySpooled,
}

/// Copies `source` into `spool` under its own name. A different file of
/// that name in the spool is an error: the archive would lose one of them.
pub fn push(source: &Path, spool: &Path) -> Result<Pushed> {
    let name = source
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: no file name", source.display()))?;
    let kind = wal::kind(name).ok_or_else(|| {
        anyhow!("{name:?} is not a WAL file name (a segment, .history, .partial or .backup file)")
    })?;
    check_dir_exists(spool)?;
    let (plain, meta) = read_limited(source)?;
    let target = spool.join(name);
    match read_nofollow(&target) {
        Ok((existing, _)) if existing == plain => return Ok(Pushed::AlreadySpooled),
        Ok(_) => bail!(
            "the spool {} holds another {kind} named {name} with different content; \
             refusing to replace it (one of them would be lost): compare the two and \
             remove the wrong one",
            spool.display()
        ),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    }
    let temp = spool.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(&plain)?;
        let mtime = meta.modified().unwrap_or_else(|_| SystemTime::now());
        file.set_modified(mtime)?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        File::open(spool)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e.context(format!("copying {name} into the spool {}", spool.display())));
    }
    Ok(Pushed::Spooled)
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

fn check_dir_exists(spool: &Path) -> Result<()> {
    match fs::symlink_metadata(spool) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("the spool {} is not a directory", spool.display()),
        Err(e) if is_not_found(&e) => bail!(
            "the spool {} does not exist: `volsnap archive` (the volsnap-archive service) \
             creates it",
            spool.display()
        ),
        Err(e) => Err(e).with_context(|| format!("spool {}", spool.display())),
    }
}

/// The whole file, refused when larger than any WAL file.
fn read_limited(path: &Path) -> Result<(Vec<u8>, fs::Metadata)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > wal::MAX_FILE {
        bail!(
            "{} is not a WAL file (not a regular file of at most 1 GiB)",
            path.display()
        );
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data)?;
    Ok((data, meta))
}

/// A regular file read whole without following a symlink.
pub fn read_nofollow(path: &Path) -> std::io::Result<(Vec<u8>, fs::Metadata)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > wal::MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file of at most 1 GiB",
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data)?;
    Ok((data, meta))
}

/// One file waiting in the spool.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub name: String,
    pub path: PathBuf,
    /// When PostgreSQL last wrote it (the push keeps the time).
    pub written: SystemTime,
}

/// The files waiting, in name order (a timeline's segments in WAL order).
/// Temporary files of killed pushes are removed once stale; names that are
/// not WAL files are left alone and reported.
pub fn waiting(spool: &Path) -> Result<(Vec<Waiting>, Vec<String>)> {
    let mut out = Vec::new();
    let mut strangers = Vec::new();
    for entry in fs::read_dir(spool).with_context(|| format!("listing {}", spool.display()))? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            strangers.push(entry.file_name().to_string_lossy().into_owned());
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if name.starts_with('.') && name.ends_with(".tmp") {
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if old && meta.is_file() {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if wal::kind(&name).is_none() || !meta.is_file() {
            strangers.push(name);
            continue;
        }
        out.push(Waiting {
            path: entry.path(),
            written: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, strangers))
}

/// Removes a shipped file and makes the removal durable.
pub fn remove(spool: &Path, waiting: &Waiting) -> Result<()> {
    fs::remove_file(&waiting.path)
        .with_context(|| format!("removing {}", waiting.path.display()))?;
    File::open(spool)?.sync_all()?;
    Ok(())
}

/// Creates the spool (owned by `owner`, mode 0700) when missing, and checks
/// that only `owner` and root can write it and what lies above it.
pub fn prepare(spool: &Path, owner: &str) -> Result<()> {
    let (uid, gid) = local_user(owner)
        .ok_or_else(|| anyhow!("archive.spool_owner: no OS user {owner:?} in /etc/passwd"))?;
    if fs::symlink_metadata(spool).is_err() {
        if let Some(parent) = spool.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::create_dir(spool).with_context(|| format!("creating {}", spool.display()))?;
        nix::unistd::chown(
            spool,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("chown {owner} {}", spool.display()))?;
        fs::set_permissions(spool, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        log::info!(
            "created the spool {} (owner {owner}, mode 0700)",
            spool.display()
        );
    }
    check(spool, owner).map_err(|e| anyhow!(e))
}

/// A local user's uid and gid from /etc/passwd. Not getpwnam(3): in a
/// static binary glibc's NSS would load shared libraries at run time (and
/// cost the binary ~100 KB); the database's OS user is a local system user.
pub fn local_user(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// What `check` says about the spool: `Err` is the problem and its fix.
pub fn check(spool: &Path, owner: &str) -> Result<(), String> {
    let shown = spool.display();
    let meta = fs::symlink_metadata(spool)
        .map_err(|e| format!("archive.spool_dir {shown}: {e} (`volsnap archive` creates it)"))?;
    if !meta.is_dir() {
        return Err(format!(
            "archive.spool_dir {shown} is not a directory (a symlink is refused)"
        ));
    }
    let (uid, _) = local_user(owner)
        .ok_or_else(|| format!("archive.spool_owner: no OS user {owner:?} in /etc/passwd"))?;
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "archive.spool_dir {shown} is owned by uid {}, not {owner} or root; run: chown {owner}: {shown}",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "archive.spool_dir {shown} is writable by group or others (mode {:04o}); run: chmod 700 {shown}",
            meta.mode() & 0o7777
        ));
    }
    if let Some(parent) = spool.parent() {
        let pmeta = fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        crate::config::files::check_trusted(parent, &pmeta, "the spool's directory")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_users_come_from_etc_passwd() {
        assert_eq!(local_user("root"), Some((0, 0)));
        assert_eq!(local_user("no-such-user-here"), None);
        assert_eq!(local_user(""), None);
    }

    #[test]
    fn push_is_atomic_idempotent_and_refuses_a_different_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let src = dir.path().join("pg_wal");
        fs::create_dir(&src).unwrap();
        let seg = src.join("000000010000000000000001");
        fs::write(&seg, vec![7u8; 8192]).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        File::options()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(push(&seg, &spool).is_err(), "no spool yet");
        fs::create_dir(&spool).unwrap();
        assert_eq!(push(&seg, &spool).unwrap(), Pushed::Spooled);
        assert_eq!(push(&seg, &spool).unwrap(), Pushed::AlreadySpooled);
        let (waiting, strangers) = waiting(&spool).unwrap();
        assert!(strangers.is_empty());
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            waiting[0].written, old,
            "the push keeps the time of the last write"
        );
        fs::write(&seg, vec![8u8; 8192]).unwrap();
        let err = push(&seg, &spool).unwrap_err();
        assert!(format!("{err:#}").contains("different content"), "{err:#}");
        let bad = src.join("postgresql.conf");
        fs::write(&bad, "x").unwrap();
        assert!(push(&bad, &spool).is_err());
        // No temporary file is left behind, and a stranger is reported.
        fs::write(spool.join("notes.txt"), "x").unwrap();
        let (waiting, strangers) = super::waiting(&spool).unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(strangers, vec!["notes.txt".to_string()]);
        assert_eq!(fs::read_dir(&spool).unwrap().count(), 2);
    }
}
