//! Segments no manifest points to, and which of them are safe to delete.
//!
//! A run that is killed outright (SIGKILL, the OOM killer, a power cut)
//! cannot delete what it uploaded: its segments stay under its own prefix
//! `<manifest>/seg/` in the segments container, and no manifest is ever
//! written for them. Such a prefix looks exactly like a run still uploading,
//! so each one is judged by what is known about its run:
//!
//! - the run of this runtime directory records its name in
//!   `RUNTIME_DIR/swift-upload` before its first segment and holds an
//!   exclusive `flock` on that file until it ends. The lock dies with the
//!   process, so a record nobody holds names a run that is over: if its
//!   manifest is missing, its segments are deleted at once. A record that is
//!   held names a live run, never touched. The probe takes a shared lock for
//!   an instant; that never turns a run away (the run lock does that);
//! - any other prefix (a run of another configuration on this host, with
//!   another runtime directory, or a record lost with `/run` at a reboot) is
//!   deleted only once its run started longer ago than any run can last:
//!   `hooks.stream_timeout` (the hook is killed then) plus [`MARGIN`] for the
//!   uploads, retries and manifest that may follow.
//!
//! Only this host's prefix is looked at: another host's runs are its own.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::config::Settings;
use crate::openstack::swift::Swift;
use crate::stream::{segments_container, BackupName};

/// What may follow the end of a backup's hook (`hooks.stream_timeout`):
/// the segments still in memory, each PUT with its retries (request timeouts
/// of a minute, backoffs, `Retry-After`), the manifest and its check. An
/// hour is several times what that can take.
pub const MARGIN: Duration = Duration::from_secs(3600);

/// The record of this runtime directory's upload in progress.
const RECORD: &str = "swift-upload";

/// One run's segments with no manifest.
#[derive(Clone, Debug, Serialize)]
pub struct Orphan {
    /// The manifest the run would have written.
    pub run: String,
    pub created: String,
    pub segments: usize,
    pub bytes: u64,
    pub state: State,
    /// For `recent`: from when it may be deleted; for `failed`: why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Deleted by this sweep.
    Removed,
    /// Would be deleted (a listing, a dry run).
    Removable,
    /// The live run of this runtime directory.
    InFlight,
    /// No record of its run here, and too young to be sure it is over.
    Recent,
    /// Should have been deleted, but a DELETE failed.
    Failed,
}

impl Orphan {
    pub fn describe(&self) -> String {
        let what = format!(
            "{} ({} segment(s), {})",
            self.run,
            self.segments,
            crate::config::human_bytes(self.bytes)
        );
        match self.state {
            State::Removed => format!("removed orphan segments of {what}"),
            State::Removable => format!(
                "orphan segments of {what}: their run is over; the next backup, prune or check removes them"
            ),
            State::InFlight => format!("segments of {what}: a backup is uploading them now"),
            State::Recent => format!(
                "segments without a manifest of {what}: removed from {} if still without one (their run may still be going)",
                self.detail.as_deref().unwrap_or("?")
            ),
            State::Failed => format!(
                "orphan segments of {what} could not all be removed: {}",
                self.detail.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// The orphans found by one sweep, and what they add up to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sweep {
    pub found: Vec<Orphan>,
    pub freed_bytes: u64,
    pub freed_segments: usize,
}

impl Sweep {
    /// One line for a report: what was freed, or `None` when nothing was.
    pub fn freed(&self) -> Option<String> {
        let runs = self
            .found
            .iter()
            .filter(|o| o.state == State::Removed)
            .count();
        (runs > 0).then(|| {
            format!(
                "removed {} orphan segment(s) of {runs} killed run(s), freed {}",
                self.freed_segments,
                crate::config::human_bytes(self.freed_bytes)
            )
        })
    }
}

/// What `RUNTIME_DIR/swift-upload` says.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    None,
    /// Held: the run is alive. The name may be empty for the instant between
    /// the run's truncate and write.
    Live(String),
    /// Not held: the run is over.
    Over(String),
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join(RECORD)
}

fn read_record(dir: &Path) -> Result<Record> {
    let path = record_path(dir);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut text = String::new();
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(mut lock) => {
            lock.read_to_string(&mut text)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let name = text.trim().to_string();
            Ok(if name.is_empty() {
                Record::None
            } else {
                Record::Over(name)
            })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let _ = file.read_to_string(&mut text);
            Ok(Record::Live(text.trim().to_string()))
        }
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Empties the record if it still names `run` and nobody holds it.
fn clear_record(dir: &Path, run: &str) {
    let path = record_path(dir);
    let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
        return;
    };
    if let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        let mut text = String::new();
        if lock.read_to_string(&mut text).is_ok() && text.trim() == run {
            let _ = lock.set_len(0);
        }
    }
}

/// This run's claim on its segments, held from before the first segment to
/// the end of the run.
pub struct InFlight {
    lock: Flock<File>,
}

impl InFlight {
    /// Records `run` in the runtime directory and holds the record. Call it
    /// after the sweep: the record it replaces is the previous run's.
    pub fn begin(dir: &Path, run: &str) -> Result<InFlight> {
        let path = record_path(dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Blocking: the only other takers are probes, which hold it for an
        // instant (another backup would need the run lock first).
        let mut lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{run}").with_context(|| format!("cannot write {}", path.display()))?;
        Ok(InFlight { lock })
    }

    /// The run ended with nothing of it left unaccounted for (its manifest
    /// was written, or its segments deleted). Dropped without `end`, the
    /// record names a run that is over: the next sweep cleans up after it.
    pub fn end(self) {
        let _ = self.lock.set_len(0);
    }
}

/// Finds this host's segment prefixes with no manifest and, with `remove`,
/// deletes those whose run is over (see the module's text). A missing
/// container holds no orphans.
pub fn sweep(settings: &Settings, swift: &Swift, remove: bool) -> Result<Sweep> {
    let s = &settings.swift;
    let seg_container = segments_container(&s.container)?;
    let host = crate::agent::cinder::hostname();
    let host_prefix = BackupName::host_prefix(&s.prefix, &host);
    let runs = match swift.list_subdirs(&seg_container, &host_prefix) {
        Ok(runs) => runs,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(anyhow!(e).context(format!("listing {seg_container}"))),
    };
    let record = read_record(&settings.runtime_dir)?;
    let mut sweep = Sweep::default();
    if !runs.is_empty() {
        let manifests: HashSet<String> = match swift.list_objects(&s.container, &host_prefix) {
            Ok(entries) => entries.into_iter().map(|e| e.name).collect(),
            Err(e) if e.is_not_found() => HashSet::new(),
            Err(e) => return Err(anyhow!(e).context(format!("listing {}", s.container))),
        };
        // Whole seconds: a run's name has no finer time.
        let longest =
            i64::try_from((settings.hooks.stream_timeout + MARGIN).as_secs()).unwrap_or(i64::MAX);
        let now = crate::time::Timestamp::now().as_second();
        for dir in runs {
            let manifest = dir.trim_end_matches('/');
            let Some(name) = BackupName::parse(&s.prefix, manifest) else {
                continue; // not a name volsnap gives: not volsnap's to delete
            };
            if manifests.contains(manifest) {
                continue;
            }
            let segments = swift
                .list_objects(&seg_container, &name.segment_prefix())
                .map_err(|e| anyhow!(e).context(format!("listing {seg_container}")))?;
            if segments.is_empty() {
                continue;
            }
            // Sub-manifests (stream::Tree) go with the segments but are
            // not counted: Swift lists one with its segments' size.
            let counted = || {
                segments
                    .iter()
                    .filter(|e| !BackupName::is_sub_manifest(&e.name))
            };
            let mut orphan = Orphan {
                run: manifest.to_string(),
                created: name.created.to_string(),
                segments: counted().count(),
                bytes: counted().map(|e| e.bytes).sum(),
                state: State::Recent,
                detail: None,
            };
            if record == Record::Live(orphan.run.clone()) {
                orphan.state = State::InFlight;
            } else if record == Record::Over(orphan.run.clone())
                || now.saturating_sub(name.created.as_second()) > longest
            {
                orphan.state = State::Removable;
            } else {
                let from = name.created.as_second().saturating_add(longest);
                orphan.detail = Some(
                    crate::time::Timestamp::from_second(from)
                        .map_or_else(|_| "never".to_string(), |t| t.to_string()),
                );
            }
            if remove && orphan.state == State::Removable {
                let failed: Vec<String> = segments
                    .iter()
                    .filter_map(|seg| match swift.delete_object(&seg_container, &seg.name) {
                        Ok(()) => None,
                        Err(e) if e.is_not_found() => None,
                        Err(e) => Some(e.to_string()),
                    })
                    .collect();
                if let Some(first) = failed.first() {
                    orphan.state = State::Failed;
                    orphan.detail = Some(format!("{} DELETE(s) failed: {first}", failed.len()));
                } else {
                    orphan.state = State::Removed;
                    sweep.freed_bytes += orphan.bytes;
                    sweep.freed_segments += orphan.segments;
                }
                log::info!("{}", orphan.describe());
            }
            sweep.found.push(orphan);
        }
    }
    if let Record::Over(run) = &record {
        let left = sweep
            .found
            .iter()
            .any(|o| &o.run == run && o.state != State::Removed);
        if remove && !left {
            clear_record(&settings.runtime_dir, run);
        }
    }
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record says live while its run holds it, over once the run is
    /// gone without ending (a SIGKILL drops the lock the same way), and
    /// nothing once the run ended or the record was cleared.
    #[test]
    fn the_record_tells_a_live_run_from_one_that_is_over() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_record(dir.path()).unwrap(), Record::None);

        let run = InFlight::begin(dir.path(), "volsnap/h/20261203T000000Z").unwrap();
        let live = Record::Live("volsnap/h/20261203T000000Z".into());
        assert_eq!(read_record(dir.path()).unwrap(), live);
        // Held: a sweep without the run lock cannot clear it.
        clear_record(dir.path(), "volsnap/h/20261203T000000Z");
        assert_eq!(read_record(dir.path()).unwrap(), live);
        drop(run);
        let over = Record::Over("volsnap/h/20261203T000000Z".into());
        assert_eq!(read_record(dir.path()).unwrap(), over);
        // Only the run it names is cleared.
        clear_record(dir.path(), "volsnap/h/20261203T000001Z");
        assert_eq!(read_record(dir.path()).unwrap(), over);
        clear_record(dir.path(), "volsnap/h/20261203T000000Z");
        assert_eq!(read_record(dir.path()).unwrap(), Record::None);

        // The next run replaces the record; one that ends leaves none.
        InFlight::begin(dir.path(), "volsnap/h/20261203T000002Z")
            .unwrap()
            .end();
        assert_eq!(read_record(dir.path()).unwrap(), Record::None);
    }
}
