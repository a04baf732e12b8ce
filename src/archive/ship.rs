//! `volsnap archive`: the root service that ships the spool to Swift.
//!
//! One pass: every file waiting in the spool, in WAL order, is read, its
//! SHA-256 computed, and — unless Swift holds that name with that SHA-256
//! already — compressed, encrypted and PUT with its MD5 as ETag; only when
//! Swift's ETag matched is the spool file removed (and the removal fsynced).
//! A kill at any point loses nothing (the file is still in the spool) and
//! doubles nothing (the next pass finds the object and only removes the
//! file). A Swift that fails ends the pass; the next one starts over after
//! a pause, while the spool grows and PostgreSQL goes on.
//!
//! For MariaDB the same service ships the closed binary logs instead
//! ([`super::binlog_ship`]), with the same store, pauses and metrics.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::binlog_ship::Binlogs;
pub use super::report::Report;
use super::spool::{self, Waiting};
use super::store::{Conflict, Shipped, Store};
use crate::config::Settings;
use crate::exit::{Exit, LOCKED};
use crate::stream::Recipients;

/// How often an idle service looks at the spool.
const POLL: Duration = Duration::from_secs(1);
/// The pause after a failed pass, doubling up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(2);
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The service's lock, apart from the backup's: both run at once.
fn lock(settings: &Settings) -> Result<Flock<File>> {
    crate::runtime::ensure_dir(&settings.runtime_dir)?;
    let path = settings.runtime_dir.join("archive.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            Exit::new(
                LOCKED,
                format!("another volsnap archive holds {}", path.display()),
            )
            .into()
        } else {
            anyhow!(e).context(format!("locking {}", path.display()))
        }
    })
}

/// Runs until `stop` is set (SIGTERM); with `once`, one pass that must
/// ship everything, an error if it could not.
pub fn run(settings: &Settings, once: bool, stop: Arc<AtomicBool>) -> Result<Report> {
    let archive = settings
        .archive
        .as_ref()
        .ok_or_else(|| anyhow!("no [archive] section in {}", settings.path.display()))?;
    let _lock = lock(settings)?;
    let mysql = settings.datastore == crate::config::Datastore::Mysql;
    if !mysql {
        spool::prepare(&archive.spool_dir, &archive.spool_owner)?;
    }
    let mut binlogs = Binlogs::default();
    let recipients = Recipients::from_settings(&settings.swift)?;
    let mut report = Report::default();
    let mut store: Option<Store> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let pass = (|| -> Result<()> {
            if mysql {
                // The server side needs no Swift: files are closed at
                // max_lag while Swift is away too.
                binlogs.look(settings)?;
            }
            if store.is_none() {
                let s = Store::open(settings)?;
                s.swift
                    .ensure_container(&s.container, settings.swift.create_container)
                    .map_err(|e| anyhow!(e))
                    .with_context(|| format!("container {}", s.container))?;
                store = Some(s);
            }
            let store = store.as_ref().expect("opened");
            if mysql {
                binlogs.ship(settings, store, recipients.as_ref(), &mut report, &stop)
            } else {
                pass(settings, store, recipients.as_ref(), &mut report, &stop)
            }
        })();
        if mysql {
            let waiting = binlogs.waiting(settings);
            super::metrics::write_gauges(
                settings,
                &report,
                waiting.len(),
                super::binlog_ship::oldest(&waiting),
            );
        } else {
            super::metrics::write(settings, &report);
        }
        match pass {
            Ok(()) => pause = FIRST_PAUSE,
            Err(e) if once => return Err(e),
            Err(e) => {
                log::error!("archive: {e:#}; next try in {}s", pause.as_secs());
                sleep(pause, &stop);
                pause = (pause * 2).min(MAX_PAUSE);
                // A session that failed may hold a dead connection or token.
                store = None;
                binlogs.forget_swift();
                if !stop.load(Ordering::SeqCst) {
                    continue;
                }
            }
        }
        let waiting = || -> Result<usize> {
            Ok(if mysql {
                binlogs.waiting(settings).len()
            } else {
                spool::waiting(&archive.spool_dir)?.0.len()
            })
        };
        if once || stop.load(Ordering::SeqCst) {
            report.waiting = waiting()?;
            return Ok(report);
        }
        sleep(POLL, &stop);
        if stop.load(Ordering::SeqCst) {
            report.waiting = waiting()?;
            return Ok(report);
        }
    }
}

fn sleep(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}

/// Ships what is waiting. A conflict (another file under the name in
/// Swift) is reported and passed over; any other failure ends the pass.
fn pass(
    settings: &Settings,
    store: &Store,
    recipients: Option<&Recipients>,
    report: &mut Report,
    stop: &AtomicBool,
) -> Result<()> {
    let archive = settings.archive.as_ref().expect("checked");
    let (waiting, strangers) = spool::waiting(&archive.spool_dir)?;
    for name in strangers {
        log::warn!(
            "archive: {}/{name} is not a WAL file; left alone",
            archive.spool_dir.display()
        );
    }
    let mut conflicts = Vec::new();
    for file in &waiting {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match ship_one(settings, store, recipients, &archive.spool_dir, file) {
            Ok(shipped) => {
                match shipped {
                    Shipped::Uploaded => report.uploaded += 1,
                    Shipped::AlreadyThere => report.already_there += 1,
                }
                log::info!(
                    "archive: {} {}",
                    file.name,
                    match shipped {
                        Shipped::Uploaded => "shipped",
                        Shipped::AlreadyThere => "was in Swift already; removed from the spool",
                    }
                );
                report.last_shipped = Some(file.name.clone());
            }
            Err(e) if e.downcast_ref::<Conflict>().is_some() => {
                report.failed += 1;
                log::error!("archive: {}: {e:#}", file.name);
                conflicts.push(file.name.clone());
            }
            Err(e) => {
                report.failed += 1;
                return Err(e.context(format!("shipping {}", file.name)));
            }
        }
    }
    if !conflicts.is_empty() {
        anyhow::bail!(
            "{} file(s) in the spool conflict with other content in Swift under the same name: {}",
            conflicts.len(),
            conflicts.join(", ")
        );
    }
    Ok(())
}

fn ship_one(
    settings: &Settings,
    store: &Store,
    recipients: Option<&Recipients>,
    spool_dir: &Path,
    file: &Waiting,
) -> Result<Shipped> {
    let (plain, meta) = spool::read_nofollow(&file.path)
        .with_context(|| format!("reading {}", file.path.display()))?;
    let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let shipped = store.ship(&file.name, &plain, written, settings, recipients)?;
    spool::remove(spool_dir, file)?;
    Ok(shipped)
}
