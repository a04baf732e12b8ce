//! `volsnap archive` for MariaDB: the binary log files the server has
//! closed, shipped from where it writes them (root reads them; there is no
//! spool, since no process of the database's has to hand anything over).
//!
//! Each pass asks the server, through the hook's `archive-settings`, which
//! file it writes now: every file before it is closed and final. A closed
//! file not in Swift yet is read, and — unless Swift holds that name with
//! that SHA-256 already — shipped as a WAL file is ([`Store::ship`]: PUT
//! with its MD5 as ETag, compared). Swift is the record of what is shipped:
//! a kill at any point loses nothing (the file is still on the server; the
//! service never purges, `expire_logs_days` does) and doubles nothing (a
//! file found in Swift with its SHA-256 is not uploaded again).
//!
//! The lag is bounded by closing the file being written (`FLUSH BINARY
//! LOGS`, the hook's `binlog-flush`) once it holds a transaction and was
//! opened [`FLUSH_AT`] of `max_lag` ago; an idle server's file is left
//! open, so no empty files pile up.
//!
//! Which files: on a first start, every closed file the server holds; from
//! then on none older than the oldest in Swift, so that what retention
//! deleted there is not shipped again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};

use super::binlog::{self, Name};
use super::report::Report;
use super::store::{Conflict, Shipped, Store, WRITTEN_KEY};
use crate::config::Settings;
use crate::hooks::Hook;
use crate::stream::Recipients;
use crate::time::Timestamp;

/// The file being written is closed at this share of `max_lag`, leaving
/// the rest for the pass that ships it.
const FLUSH_AT: (u32, u32) = (3, 4);

/// The largest binary log read (max_binlog_size is at most 1 GiB, and a
/// transaction that began in a file ends in it).
const MAX_FILE: u64 = 4 << 30;

/// Where the last file shipped is noted: not the record (Swift is), only
/// what the lag metric counts from while Swift cannot be listed.
const HINT: &str = "binlog-archived";

/// One closed file on the server.
#[derive(Clone, Debug)]
pub struct Closed {
    pub name: Name,
    pub path: PathBuf,
    /// When the server last wrote it (closed it).
    pub written: SystemTime,
}

/// What the service knows between passes.
#[derive(Debug, Default)]
pub struct Binlogs {
    /// The closed files the server holds, oldest first (from the last look).
    closed: Vec<Closed>,
    /// This base's files in Swift (`None` until listed): number → when
    /// the file shipped as it was written (`None` until a HEAD said).
    archived: Option<BTreeMap<u64, Option<SystemTime>>>,
    /// The file being written, when it held no transaction yet, and when
    /// the server was asked.
    idle: Option<(Name, Timestamp)>,
    /// When the archive was last marked as reaching an idle time.
    marked: Option<Timestamp>,
}

/// The object that says how far the archive reaches on a quiet server:
/// `volsnap-reached-file`, the file being written, held no transaction at
/// `volsnap-reached-at`, and every file before it was in Swift.
pub const REACHED: &str = "reached";
pub const REACHED_FILE: &str = "volsnap-reached-file";
pub const REACHED_AT: &str = "volsnap-reached-at";

/// The server's binary log as the hook's `archive-settings` reports it.
struct Server {
    dir: PathBuf,
    current: Name,
    files: Vec<Name>,
}

fn ask(settings: &Settings) -> Result<Server> {
    let hook = Hook::new(settings, settings.hooks.timeout);
    let values = hook.run("archive-settings")?.values;
    let get = |k: &str| values.get(k).map(String::as_str).unwrap_or("");
    if !matches!(get("log_bin"), "ON" | "1") {
        bail!(
            "the server's binary log is off (log_bin {:?}): nothing to archive; see `volsnap check`",
            get("log_bin")
        );
    }
    let basename = Path::new(get("log_bin_basename"));
    let dir = basename
        .parent()
        .filter(|d| basename.is_absolute() && !d.as_os_str().is_empty())
        .ok_or_else(|| anyhow!("log_bin_basename {basename:?} is not an absolute path"))?;
    let current = Name::parse(get("binlog_file")).ok_or_else(|| {
        anyhow!(
            "binlog_file {:?} is not a binary log name",
            get("binlog_file")
        )
    })?;
    let files = get("binlog_files")
        .split_whitespace()
        .filter_map(Name::parse)
        .filter(|n| n.base == current.base)
        .collect();
    Ok(Server {
        dir: dir.to_path_buf(),
        current,
        files,
    })
}

impl Binlogs {
    /// Asks the server which files are closed, and closes the one being
    /// written when it holds a transaction older than the lag allows.
    pub fn look(&mut self, settings: &Settings) -> Result<()> {
        let archive = settings.archive.as_ref().expect("checked");
        let flush_after = archive.max_lag * FLUSH_AT.0 / FLUSH_AT.1;
        let server = ask(settings)?;
        let active = server.dir.join(server.current.to_string());
        let size = fs::metadata(&active)
            .with_context(|| format!("{}", active.display()))?
            .len();
        let head = binlog::head(&active, size)?;
        let age = Timestamp::now().seconds_since(head.opened);
        if head.has_content && age >= flush_after.as_secs_f64() {
            Hook::new(settings, settings.hooks.timeout).run("binlog-flush")?;
            log::info!(
                "archive: closed {} (opened {age:.0}s ago) with FLUSH BINARY LOGS",
                server.current
            );
            self.idle = None;
            return self.look_only(settings);
        }
        self.idle = (!head.has_content).then(|| (server.current.clone(), Timestamp::now()));
        self.closed = closed(server)?;
        Ok(())
    }

    /// Asks the server which files are closed, changing nothing.
    pub fn look_only(&mut self, settings: &Settings) -> Result<()> {
        self.closed = closed(ask(settings)?)?;
        Ok(())
    }

    /// Learns which files Swift holds (of the base the server writes).
    pub fn list(&mut self, store: &Store) -> Result<()> {
        let base = self.closed.first().map(|c| c.name.base.clone());
        let numbers = store
            .list()?
            .iter()
            .filter_map(|e| e.name.strip_prefix(&store.prefix))
            .filter_map(Name::parse)
            .filter(|n| Some(&n.base) == base.as_ref())
            .map(|n| (n.number, None))
            .collect();
        self.archived = Some(numbers);
        Ok(())
    }

    /// The closed files not known to be in Swift: every one from the
    /// oldest there on that Swift lacks, or holds as written at another
    /// time (the server's numbers started over: RESET MASTER); before
    /// Swift could be listed, those after the last one this host noted
    /// shipping.
    pub fn waiting(&self, settings: &Settings) -> Vec<&Closed> {
        match &self.archived {
            Some(numbers) => {
                let floor = numbers.keys().next().copied().unwrap_or(0);
                self.closed
                    .iter()
                    .filter(|c| {
                        c.name.number >= floor
                            && match numbers.get(&c.name.number) {
                                None => true,
                                Some(None) => false,
                                Some(Some(t)) => *t != c.written,
                            }
                    })
                    .collect()
            }
            None => {
                let hint = fs::read_to_string(settings.runtime_dir.join(HINT))
                    .ok()
                    .and_then(|t| Name::parse(t.trim()));
                self.closed
                    .iter()
                    .filter(|c| hint.as_ref().map_or(true, |h| c.name.number > h.number))
                    .collect()
            }
        }
    }

    /// Ships what is waiting, oldest first. A conflict (another file under
    /// the name in Swift) is reported and passed over; any other failure
    /// ends the pass.
    pub fn ship(
        &mut self,
        settings: &Settings,
        store: &Store,
        recipients: Option<&Recipients>,
        report: &mut Report,
        stop: &AtomicBool,
    ) -> Result<()> {
        if self.archived.is_none() {
            self.list(store)?;
        }
        self.verify(store)?;
        let waiting: Vec<Closed> = self.waiting(settings).into_iter().cloned().collect();
        let mut conflicts = Vec::new();
        for file in &waiting {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let name = file.name.to_string();
            match ship_one(settings, store, recipients, file) {
                Ok(shipped) => {
                    match shipped {
                        Shipped::Uploaded => report.uploaded += 1,
                        Shipped::AlreadyThere => report.already_there += 1,
                    }
                    log::info!(
                        "archive: {name} {}",
                        match shipped {
                            Shipped::Uploaded => "shipped",
                            Shipped::AlreadyThere => "was in Swift already",
                        }
                    );
                    self.archived
                        .as_mut()
                        .expect("listed")
                        .insert(file.name.number, Some(file.written));
                    note_shipped(settings, &name);
                    report.last_shipped = Some(name);
                }
                Err(e) if e.downcast_ref::<Conflict>().is_some() => {
                    report.failed += 1;
                    log::error!("archive: {name}: {e:#}");
                    conflicts.push(name);
                }
                Err(e) => {
                    report.failed += 1;
                    return Err(e.context(format!("shipping {name}")));
                }
            }
        }
        if conflicts.is_empty() && !stop.load(Ordering::SeqCst) {
            self.mark_reached(settings, store)?;
        }
        if !conflicts.is_empty() {
            bail!(
                "{} binary log(s) conflict with other content in Swift under the same name \
                 (RESET MASTER, or two servers archiving under one host name?): {}",
                conflicts.len(),
                conflicts.join(", ")
            );
        }
        Ok(())
    }

    /// Learns, once per file, whether the closed files Swift lists are the
    /// ones on the server: the time each was written is recorded with it.
    fn verify(&mut self, store: &Store) -> Result<()> {
        let numbers = self.archived.as_mut().expect("listed");
        for c in &self.closed {
            let Some(entry @ None) = numbers.get_mut(&c.name.number) else {
                continue;
            };
            let object = store.object(&c.name.to_string());
            let info = store
                .swift
                .head_object(&store.container, &object)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("HEAD {object}"))?;
            let recorded = info
                .metadata
                .get(WRITTEN_KEY)
                .and_then(|t| t.parse::<Timestamp>().ok());
            let same = recorded.is_some() && recorded == Timestamp::try_from(c.written).ok();
            // Another time: shipped again, where Store::ship compares the
            // content and refuses to overwrite a different one.
            *entry = Some(if same {
                c.written
            } else {
                SystemTime::UNIX_EPOCH
            });
        }
        Ok(())
    }

    /// On a quiet server (the file being written holds no transaction and
    /// every one before it is shipped) the archive holds every commit up to
    /// when the server was asked: noted in Swift, at most every quarter of
    /// max_lag, so that a restore to a time since then is not refused.
    fn mark_reached(&mut self, settings: &Settings, store: &Store) -> Result<()> {
        let Some((current, at)) = &self.idle else {
            return Ok(());
        };
        let every = settings.archive.as_ref().expect("checked").max_lag / 4;
        if self
            .marked
            .is_some_and(|m| at.seconds_since(m) < every.as_secs_f64())
        {
            return Ok(());
        }
        if !self.waiting(settings).is_empty() {
            return Ok(());
        }
        let metadata = [
            (REACHED_FILE.to_string(), current.to_string()),
            (REACHED_AT.to_string(), at.to_string()),
        ]
        .into_iter()
        .collect();
        store
            .swift
            .put_object(
                &store.container,
                &store.object(REACHED),
                Vec::new().into(),
                &metadata,
            )
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("PUT {}", store.object(REACHED)))?;
        self.marked = Some(*at);
        Ok(())
    }

    /// A Swift session that failed is opened and listed again.
    pub fn forget_swift(&mut self) {
        self.archived = None;
    }
}

/// The files before the one being written, oldest first.
fn closed(server: Server) -> Result<Vec<Closed>> {
    let mut closed = Vec::new();
    for name in server.files {
        if name.number >= server.current.number {
            continue;
        }
        let path = server.dir.join(name.to_string());
        let written = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .with_context(|| format!("{}", path.display()))?;
        closed.push(Closed {
            name,
            path,
            written,
        });
    }
    closed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(closed)
}

fn note_shipped(settings: &Settings, name: &str) {
    let path = settings.runtime_dir.join(HINT);
    let tmp = settings.runtime_dir.join(format!(".{HINT}.tmp"));
    if fs::write(&tmp, format!("{name}\n"))
        .and_then(|()| fs::rename(&tmp, &path))
        .is_err()
    {
        log::debug!("could not note {name} in {}", path.display());
    }
}

fn ship_one(
    settings: &Settings,
    store: &Store,
    recipients: Option<&Recipients>,
    file: &Closed,
) -> Result<Shipped> {
    let plain = read(&file.path).with_context(|| format!("reading {}", file.path.display()))?;
    store.ship(
        &file.name.to_string(),
        &plain,
        file.written,
        settings,
        recipients,
    )
}

/// A regular file read whole, not through a symlink.
fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = File::options()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file of at most 4 GiB",
        ));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// How long ago the oldest waiting file was closed (the lag metric).
pub fn oldest(waiting: &[&Closed]) -> Option<SystemTime> {
    waiting.iter().map(|c| c.written).min()
}
