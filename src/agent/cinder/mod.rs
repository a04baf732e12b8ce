//! The Cinder strategy, the one place that knows the order of its steps:
//!
//! plan (mounts, volumes, hook — before anything is locked) → lock → syncfs →
//! hook `freeze` → the window (`window`: watchdog, FIFREEZE, snapshots
//! created `pending` and seen `available`, FITHAW, disarm) → hook `thaw`
//! (always, once `freeze` was attempted, before anything else) → the verdict
//! (`verdict`: final labels only for a window that was good; otherwise the
//! run's snapshots are deleted) → what earlier runs left (`runs`) →
//! retention. Agents return data; `cli/` prints.

pub mod backups;
mod outcome;
pub mod plan;
pub mod prune;
pub mod runs;
pub mod verdict;
pub mod window;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use outcome::{clip, METADATA_MAX};
pub use outcome::{Consistency, SnapshotReport};
pub use plan::{hostname, Plan, Volume};
pub use prune::prune;
pub use runs::{list, parse_cinder_time};

use crate::config::{BackupMode, Datastore, HookFailurePolicy, Settings};
use crate::exit;
use crate::freeze;
use crate::openstack;
use crate::openstack::cinder::Cinder;
use crate::runtime::{self, FrozenRecord, RunLock};
use crate::watchdog::Watchdog;

/// How long a backup waits for snapshots that earlier runs left `creating`
/// before deleting them (the next run tries again).
const LEFTOVER_WAIT: Duration = Duration::from_secs(60);
/// How long a failed run waits for its own snapshots to leave `creating`.
const DISCARD_WAIT: Duration = Duration::from_secs(600);

/// A good run, built at its end from the plan and what happened.
#[derive(Debug, Serialize)]
pub struct Report {
    pub strategy: &'static str,
    pub dry_run: bool,
    pub run: String,
    pub consistency: Consistency,
    pub volumes: Vec<Volume>,
    pub snapshots: Vec<SnapshotReport>,
    /// FIFREEZE to the FITHAW that ended the window.
    pub freeze_ms: u64,
    /// Hook `freeze` start to hook `thaw` end: how long the database was held.
    pub lock_ms: u64,
    pub total_ms: u64,
    /// What every snapshot carries (hook values included).
    pub metadata: BTreeMap<String, String>,
    /// Snapshots earlier (killed or failed) runs left, removed by this run.
    pub removed_leftovers: Vec<String>,
    /// Snapshots and backups deleted by the retention policy after this backup.
    pub pruned: Vec<String>,
    /// Cinder backups of this run's snapshots (`[cinder] backup`).
    pub backups: Vec<backups::BackupReport>,
    /// Why a backup is not good (exit 4; the snapshots stay).
    pub backup_error: Option<String>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.backup_error.is_some() {
            return exit::BACKUP_FAILED;
        }
        match self.consistency {
            Consistency::Crash => exit::CRASH_CONSISTENT,
            _ => exit::SUCCESS,
        }
    }
}

/// Set by SIGINT, SIGTERM and SIGHUP: stop, thaw at once, clean up, exit 1.
pub fn stop_flag() -> Result<&'static AtomicBool> {
    static STOP: AtomicBool = AtomicBool::new(false);
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            signal_hook::low_level::register(signal, || STOP.store(true, Ordering::SeqCst))?;
        }
    }
    Ok(&STOP)
}

fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

pub fn connect(settings: &Settings) -> Result<Cinder> {
    openstack::cinder(&openstack::connect(&settings.openstack)?)
}

/// One backup of a resolved plan.
pub fn backup(
    settings: &Settings,
    cinder: &Cinder,
    plan: &Plan,
    stop: &'static AtomicBool,
) -> Result<Report> {
    let started = Instant::now();
    let mut lock = RunLock::acquire(&settings.runtime_dir)?;
    refuse_if_quiesced_by_qemu_ga(&settings.runtime_dir)?;
    let run = format!(
        "{}-{}",
        crate::time::Timestamp::now().compact(),
        std::process::id()
    );
    lock.name_run(&run)?;
    // A token that would expire inside the window is renewed now: requests
    // made while frozen do not log in again.
    cinder
        .session()
        .ensure_fresh(plan.max_freeze + Duration::from_secs(300))?;
    // Flush now so the freeze has little left to write.
    let mut opened = Vec::new();
    for v in &plan.volumes {
        let file = freeze::open_mount(&v.mount)?;
        freeze::syncfs_fd(&file, &v.mount)?;
        opened.push((v.mount.clone(), file));
    }
    check_stop(stop)?;
    runtime::write_frozen(
        &settings.runtime_dir,
        &FrozenRecord {
            pid: std::process::id(),
            config: settings.path.clone(),
            mounts: plan.mounts(),
            started_unix_ms: runtime::now_unix_ms(),
        },
    )?;

    let mut dog = Some(Watchdog::arm(&window::watchdog_plan(
        plan,
        &lock,
        &run,
        settings.hooks.timeout,
    ))?);
    let lock_started = Instant::now();
    let consistency = match plan.runner.run("freeze") {
        Ok(out) if settings.datastore == Datastore::None => {
            Ok((Consistency::Filesystem, Some(out.values)))
        }
        Ok(out) => Ok((Consistency::Application, Some(out.values))),
        Err(e) => match plan.on_hook_failure {
            HookFailurePolicy::Abort => Err(e.context("the datastore hook could not quiesce the database; no snapshot was taken (on_hook_failure = \"abort\")")),
            HookFailurePolicy::CrashConsistent => {
                log::warn!("{e:#}; taking crash-consistent snapshots (on_hook_failure = \"crash-consistent\")");
                Ok((Consistency::Crash, None))
            }
        },
    };
    let window = consistency.and_then(|(consistency, values)| {
        check_stop(stop)?;
        let metadata = metadata(settings, plan, &run, &lock, values.unwrap_or_default());
        // The request bodies are made now: nothing that can be done before
        // the freeze is done inside it.
        let bodies = window::requests(plan, &run, &metadata, &settings.cinder.name_prefix);
        let dog = dog.take().expect("armed once");
        let w = window::run(plan, cinder, dog, opened, bodies, stop)?;
        Ok((consistency, metadata, w))
    });
    if let Some(dog) = dog {
        // The window never opened: the hook's thaw below is the agent's.
        if let Err(e) = dog.disarm() {
            log::warn!("{e:#}");
        }
    }
    // Always, once `freeze` was attempted, and first: the database is
    // released before anything else happens (labels, deletions).
    let thawed = plan.runner.run("thaw");
    let lock_ms = window::ms(lock_started.elapsed());
    if let Err(e) = &thawed {
        log::error!("{e:#}");
    }
    let (consistency, metadata, window) = match window {
        Ok(w) => w,
        Err(e) => {
            let _ = runtime::clear_frozen(&settings.runtime_dir);
            return Err(e);
        }
    };
    log_window(&window);

    let ids: Vec<String> = window.shots.iter().filter_map(|s| s.id.clone()).collect();
    let mut problems = verdict::problems(&window);
    if window
        .thaw_errors
        .iter()
        .all(|e| matches!(e, freeze::ThawError::NotFrozen(_)))
    {
        runtime::clear_frozen(&settings.runtime_dir)?;
    }
    if problems.is_empty() {
        if let Err(e) = verdict::label(cinder, &ids, consistency, window.freeze_ms) {
            problems.push(format!("{e:#}"));
        }
    }
    if !problems.is_empty() {
        let mut message = problems.join("; ");
        let left = verdict::discard(cinder, &ids, DISCARD_WAIT);
        if left.is_empty() && !ids.is_empty() {
            message.push_str(&format!(
                "; deleted this run's snapshots ({})",
                ids.join(", ")
            ));
        } else if !left.is_empty() {
            let left: Vec<String> = left
                .iter()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect();
            message.push_str(&format!(
                "; CLEANUP FAILED (they are labelled {}; the next run removes them): {}",
                verdict::FAILED_RUN,
                left.join("; ")
            ));
        }
        return Err(anyhow!(message));
    }
    thawed.context("the snapshots are good, but the datastore hook's thaw failed: check the database accepts writes")?;

    let mut cleanup =
        runs::clean(cinder, &settings.runtime_dir, LEFTOVER_WAIT).unwrap_or_else(|e| {
            log::warn!("backup done, but looking for what earlier runs left failed: {e:#}");
            runs::Cleanup::default()
        });
    let mut outcome = backups::Outcome::default();
    if settings.cinder.backup.mode != BackupMode::Off {
        // Leftover backups first: an incremental must not chain onto one.
        match backups::clean(cinder, &settings.runtime_dir, LEFTOVER_WAIT) {
            Ok((removed, _)) => cleanup.removed.extend(removed),
            Err(e) => log::warn!("looking for backups earlier runs left failed: {e:#}"),
        }
        let snapshots = report_snapshots(&window);
        outcome = backups::take(
            cinder,
            &backups::Request {
                settings: &settings.cinder.backup,
                name_prefix: &settings.cinder.name_prefix,
                run: &run,
                metadata: &metadata,
                consistency,
                snapshots: &snapshots,
                stop,
            },
        );
        if let Some(e) = &outcome.error {
            log::error!("{e}");
        }
    }
    let mut pruned = Vec::new();
    if settings.retention.is_set() && settings.retention.after_backup {
        match prune(settings, cinder, false) {
            Ok(p) => pruned = p.all(),
            Err(e) => log::warn!("backup done, but retention failed: {e:#}"),
        }
    }
    let mut metadata = metadata;
    metadata.insert("consistency".into(), consistency.name().into());
    metadata.insert("freeze_ms".into(), window.freeze_ms.to_string());
    Ok(Report {
        strategy: "cinder",
        dry_run: false,
        run,
        consistency,
        volumes: plan.volumes.clone(),
        snapshots: report_snapshots(&window)
            .into_iter()
            .map(|mut s| {
                if outcome
                    .backups
                    .iter()
                    .any(|b| b.snapshot_id == s.id && b.snapshot_deleted)
                {
                    s.status = "deleted (backed up)".into();
                }
                s
            })
            .collect(),
        freeze_ms: window.freeze_ms,
        lock_ms,
        total_ms: window::ms(started.elapsed()),
        metadata,
        removed_leftovers: cleanup.removed,
        pruned,
        backups: outcome.backups,
        backup_error: outcome.error,
    })
}

fn report_snapshots(window: &window::Window) -> Vec<SnapshotReport> {
    window
        .shots
        .iter()
        .map(|s| SnapshotReport {
            id: s.id.clone().unwrap_or_default(),
            name: s.name.clone(),
            volume_id: s.volume.volume_id.clone(),
            mount: s.volume.mount.clone(),
            status: "available".into(),
        })
        .collect()
}

/// Who thawed, when, and where the window's time went (`-v` for the detail;
/// bench/freeze-window reads that line).
fn log_window(w: &window::Window) {
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} ms", millis(d)));
    log::debug!(
        "freeze window {} ms: FIFREEZE {:.1} ms; {}; FITHAW {:.1} ms",
        w.freeze_ms,
        millis(w.froze_in),
        w.shots
            .iter()
            .map(|s| format!(
                "POST 202 at {}, available seen at {} after {} polls ({:.1} ms in requests)",
                at(s.accepted),
                at(s.seen_available),
                s.polls,
                millis(s.in_polls)
            ))
            .collect::<Vec<_>>()
            .join("; "),
        millis(w.thawed_in)
    );
    if let Some(e) = &w.disarm_error {
        log::warn!("{e}");
    }
    match &w.fired {
        Some(f) => log::error!(
            "the watchdog thawed after {} ms frozen, before volsnap could: {}",
            w.freeze_ms,
            f.summary
        ),
        None if w.thaw_errors.is_empty() => log::info!("thawed after {} ms frozen", w.freeze_ms),
        None => {
            for e in &w.thaw_errors {
                log::error!("{e}");
            }
        }
    }
}

/// qemu-ga (`volsnap hook freeze`) has the database quiesced for a snapshot
/// of its own: this run's hook `freeze` would take the lock over (the mysql
/// hook releases a lock it finds) and the filesystems are frozen already.
fn refuse_if_quiesced_by_qemu_ga(dir: &Path) -> Result<()> {
    if let Some(q) = runtime::read_quiesced(dir)? {
        let since = crate::time::Timestamp::from_millisecond(q.since_unix_ms as i64)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let left = (q.until_unix_ms.saturating_sub(runtime::now_unix_ms()) / 1000) + 1;
        return Err(exit::Exit::new(
            exit::LOCKED,
            format!(
                "qemu-ga has the database quiesced for a snapshot (its fsfreeze hook froze it at {since}); \
                 try again after its thaw (at the latest in {left} s, when the hook's lock releases by itself)"
            ),
        )
        .into());
    }
    Ok(())
}

/// What every snapshot of the run is created with: `consistency=pending`
/// until the verdict. Hook values come last and never override volsnap's own
/// keys (a clashing key gets a `hook_` prefix).
fn metadata(
    settings: &Settings,
    plan: &Plan,
    run: &str,
    lock: &RunLock,
    hook_values: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut meta: BTreeMap<String, String> = settings.cinder.metadata.clone();
    let lock_path = lock.path().display().to_string();
    for (k, v) in [
        ("created_by", "volsnap"),
        ("volsnap_version", env!("CARGO_PKG_VERSION")),
        ("datastore", settings.datastore.name()),
        ("consistency", verdict::PENDING),
        ("host", plan.host.as_str()),
        ("volsnap_run", run),
        ("volsnap_lock", lock_path.as_str()),
    ] {
        meta.insert(k.to_string(), clip(v));
    }
    for (k, v) in hook_values {
        let key = if meta.contains_key(&k) || k == "freeze_ms" || k == "mount" {
            format!("hook_{k}")
        } else {
            k.clone()
        };
        if key.len() > METADATA_MAX {
            log::warn!(
                "hook value {k} dropped: its key is longer than Cinder's {METADATA_MAX} characters"
            );
            continue;
        }
        if v.len() > METADATA_MAX {
            log::warn!("hook value {k} is {} characters; Cinder keeps {METADATA_MAX}, so it is cut (the full value: {v})", v.len());
        }
        meta.insert(key, clip(&v));
    }
    meta
}
