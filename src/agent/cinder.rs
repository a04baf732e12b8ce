//! The Cinder strategy, the one place that knows the order of its steps:
//!
//! lock → checks, authentication, volumes (all before the freeze) → syncfs →
//! hook `freeze` → watchdog armed → frozen set recorded → syncfs → FIFREEZE all
//! → POST every snapshot concurrently → poll each until `available` → FITHAW
//! → disarm → hook `thaw` (always, once `freeze` was attempted) → freeze_ms
//! into the snapshots' metadata (after the thaw: it needs no lock held),
//! report, retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::check;
use crate::config::{Datastore, HookFailurePolicy, Settings};
use crate::discover;
use crate::exit;
use crate::freeze::{self, Frozen};
use crate::hooks::{self, Hook};
use crate::mounts;
use crate::openstack::auth::{self, Env, Service, Session};
use crate::openstack::cinder::{Cinder, NewSnapshot, Snapshot, SnapshotFilter, Target};
use crate::retention;
use crate::runtime::{self, FrozenRecord, RunLock};
use crate::watchdog::{self, Watchdog};

/// First pause between two polls of a `creating` snapshot: the freeze
/// window lasts until `available` is seen, and Cinder gets there in a few
/// hundred milliseconds, so polling starts fast and flat.
const POLL_FAST: Duration = Duration::from_millis(10);
/// How long polling stays fast before backing off.
const POLL_FAST_FOR: Duration = Duration::from_secs(2);
const POLL_CAP: Duration = Duration::from_millis(500);
/// How long a failed run waits for its snapshots to leave `creating` so it
/// can delete them (Cinder refuses to delete a `creating` snapshot).
const CLEANUP_WAIT: Duration = Duration::from_secs(600);
/// Cinder's limit for a metadata key or value.
const METADATA_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The datastore hook quiesced the database.
    Application,
    /// Datastore `none`: the filesystems were frozen, nothing more.
    Filesystem,
    /// The hook failed and `on_hook_failure = "crash-consistent"` allowed it.
    Crash,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Application => "application",
            Consistency::Filesystem => "filesystem",
            Consistency::Crash => "crash",
        }
    }
}

#[derive(Debug, Default)]
pub struct Options {
    pub dry_run: bool,
    /// `/sys` in production; a fixture tree in tests.
    pub sys_root: PathBuf,
}

/// One data volume of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Volume {
    pub mount: PathBuf,
    pub volume_id: String,
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    pub id: String,
    pub name: String,
    pub volume_id: String,
    pub mount: PathBuf,
    pub status: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub strategy: &'static str,
    pub dry_run: bool,
    pub consistency: Option<Consistency>,
    pub volumes: Vec<Volume>,
    pub snapshots: Vec<SnapshotReport>,
    /// First FIFREEZE to last FITHAW.
    pub freeze_ms: Option<u64>,
    /// Hook `freeze` start to hook `thaw` end: how long the database was held.
    pub lock_ms: Option<u64>,
    pub total_ms: u64,
    /// What every snapshot carries (hook values included).
    pub metadata: BTreeMap<String, String>,
    /// Snapshots deleted by the retention policy after this backup.
    pub pruned: Vec<String>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        match self.consistency {
            Some(Consistency::Crash) => exit::CRASH_CONSISTENT,
            _ => exit::SUCCESS,
        }
    }

    pub fn print_human(&self) {
        if self.dry_run {
            println!("dry run: nothing was locked, frozen or created. The plan:");
            for v in &self.volumes {
                println!(
                    "  freeze {}  snapshot volume {} ({})",
                    v.mount.display(),
                    v.volume_id,
                    v.status
                );
            }
            return;
        }
        let consistency = self.consistency.map_or("?", Consistency::name);
        println!(
            "backup done: {} snapshot(s), consistency {consistency}, frozen {} ms, database held {} ms, total {} ms",
            self.snapshots.len(),
            self.freeze_ms.unwrap_or(0),
            self.lock_ms.unwrap_or(0),
            self.total_ms
        );
        for s in &self.snapshots {
            println!(
                "  {}  volume {}  snapshot {}  {}",
                s.mount.display(),
                s.volume_id,
                s.id,
                s.status
            );
        }
        if !self.pruned.is_empty() {
            println!(
                "  retention deleted {} older snapshot(s): {}",
                self.pruned.len(),
                self.pruned.join(", ")
            );
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
    let config = auth::resolve(&settings.openstack, &Env::from_process())?;
    let session = Session::connect(config)?;
    let endpoint = session.endpoint(Service::BlockStorage)?;
    Ok(Cinder::new(session, endpoint))
}

pub fn backup(settings: &Settings, options: &Options, stop: &AtomicBool) -> Result<Report> {
    let started = Instant::now();
    let _lock = RunLock::acquire(&settings.runtime_dir)?;

    // Everything that can fail before the freeze fails here.
    let mountinfo = mounts::read_mountinfo().context("reading /proc/self/mountinfo")?;
    let protected = check::protected_paths(settings);
    let mut real_mounts = Vec::new();
    for mount in &settings.mounts {
        let (real, entry) = mounts::check_freezable(mount, &mountinfo, &protected)
            .map_err(|p| anyhow!("mount {p}"))?;
        real_mounts.push((mount.clone(), real, entry.clone()));
    }
    check_std_streams(
        &real_mounts
            .iter()
            .map(|(_, r, _)| r.as_path())
            .collect::<Vec<_>>(),
    )?;
    hooks::check_dir(&settings.hooks.dir).map_err(anyhow::Error::msg)?;
    hooks::check_file(&hooks::hook_path(settings)).map_err(anyhow::Error::msg)?;
    check_stop(stop)?;

    let cinder = connect(settings)?;
    let volumes = resolve_volumes(settings, &cinder, &real_mounts, &options.sys_root)?;
    check_stop(stop)?;

    let mut report = Report {
        strategy: "cinder",
        dry_run: options.dry_run,
        consistency: None,
        volumes: volumes.clone(),
        snapshots: Vec::new(),
        freeze_ms: None,
        lock_ms: None,
        total_ms: 0,
        metadata: BTreeMap::new(),
        pruned: Vec::new(),
    };
    if options.dry_run {
        report.total_ms = ms(started.elapsed());
        return Ok(report);
    }
    refuse_if_quiesced_by_qemu_ga(&settings.runtime_dir)?;

    // Flush now so the freeze has little left to write.
    let mut opened = Vec::new();
    for v in &volumes {
        freeze::syncfs(&v.mount)?;
        opened.push((v.mount.clone(), freeze::open_mount(&v.mount)?));
    }

    let hook = Hook::new(
        settings,
        settings.cinder.max_freeze + settings.hooks.timeout,
    );
    let lock_started = Instant::now();
    let result = quiesced(
        settings,
        &cinder,
        &hook,
        &volumes,
        opened,
        stop,
        &mut report,
    );
    // Always, once `freeze` was attempted: it must be idempotent.
    let thawed = hook.run("thaw");
    report.lock_ms = Some(ms(lock_started.elapsed()));
    if let Err(e) = &thawed {
        log::error!("{e:#}");
    }
    result?;
    record_freeze_ms(&cinder, &report);
    thawed.context("the snapshots are good, but the datastore hook's thaw failed: check the database accepts writes")?;

    if settings.retention.is_set() && settings.retention.after_backup {
        match prune(settings, &cinder, false) {
            Ok(pruned) => report.pruned = pruned,
            Err(e) => log::warn!("backup done, but retention failed: {e:#}"),
        }
    }
    report.total_ms = ms(started.elapsed());
    Ok(report)
}

/// qemu-ga (`volsnap hook freeze`) has the database quiesced for a snapshot
/// of its own: this run's hook `freeze` would take the lock over (the mysql
/// hook releases a lock it finds) and the filesystems are frozen already.
fn refuse_if_quiesced_by_qemu_ga(dir: &Path) -> Result<()> {
    if let Some(q) = runtime::read_quiesced(dir)? {
        let since = jiff::Timestamp::from_millisecond(q.since_unix_ms as i64)
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

/// From the hook's `freeze` to the snapshots' final metadata.
fn quiesced(
    settings: &Settings,
    cinder: &Cinder,
    hook: &Hook,
    volumes: &[Volume],
    opened: Vec<(PathBuf, std::fs::File)>,
    stop: &AtomicBool,
    report: &mut Report,
) -> Result<()> {
    check_stop(stop)?;
    let (consistency, hook_values) = match hook.run("freeze") {
        Ok(out) if settings.datastore == Datastore::None => (Consistency::Filesystem, out.values),
        Ok(out) => (Consistency::Application, out.values),
        Err(e) => match settings.cinder.on_hook_failure {
            HookFailurePolicy::Abort => {
                return Err(e.context("the datastore hook could not quiesce the database; no snapshot was taken (on_hook_failure = \"abort\")"))
            }
            HookFailurePolicy::CrashConsistent => {
                log::warn!("{e:#}; taking crash-consistent snapshots (on_hook_failure = \"crash-consistent\")");
                (Consistency::Crash, BTreeMap::new())
            }
        },
    };
    report.consistency = Some(consistency);
    let run_id = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let host = hostname();
    report.metadata = metadata(settings, consistency, &host, &run_id, &hook_values);

    let snaps = frozen_window(
        settings,
        cinder,
        volumes,
        opened,
        &report.metadata,
        &host,
        &run_id,
        stop,
    )?;
    report.freeze_ms = Some(snaps.freeze_ms);
    report
        .metadata
        .insert("freeze_ms".into(), snaps.freeze_ms.to_string());
    report.snapshots = snaps.snapshots;
    Ok(())
}

/// Adds the freeze window to each snapshot's metadata. Called once the
/// datastore is released: it is one more Cinder round trip, and nothing
/// about it needs the database held.
fn record_freeze_ms(cinder: &Cinder, report: &Report) {
    let Some(freeze_ms) = report.freeze_ms else {
        return;
    };
    let update = BTreeMap::from([("freeze_ms".to_string(), freeze_ms.to_string())]);
    for s in &report.snapshots {
        if let Err(e) = cinder.update_snapshot_metadata(&s.id, &update) {
            log::warn!(
                "snapshot {} is good, but recording freeze_ms failed: {e}",
                s.id
            );
        }
    }
}

struct Taken {
    snapshots: Vec<SnapshotReport>,
    freeze_ms: u64,
}

/// Watchdog, freeze, snapshots, thaw. On any failure every snapshot this run
/// created is deleted: nothing half-done is left behind.
#[allow(clippy::too_many_arguments)]
fn frozen_window(
    settings: &Settings,
    cinder: &Cinder,
    volumes: &[Volume],
    opened: Vec<(PathBuf, std::fs::File)>,
    metadata: &BTreeMap<String, String>,
    host: &str,
    run_id: &str,
    stop: &AtomicBool,
) -> Result<Taken> {
    let max_freeze = settings.cinder.max_freeze;
    let mounts: Vec<PathBuf> = volumes.iter().map(|v| v.mount.clone()).collect();
    let dir = &settings.runtime_dir;
    runtime::write_frozen(
        dir,
        &FrozenRecord {
            pid: std::process::id(),
            config: settings.path.clone(),
            mounts: mounts.clone(),
            started_unix_ms: runtime::now_unix_ms(),
        },
    )?;
    let dog = Watchdog::arm(&watchdog::Plan {
        config: std::fs::canonicalize(&settings.path).unwrap_or_else(|_| settings.path.clone()),
        runtime_dir: dir.clone(),
        mounts,
        deadline_ms: ms(max_freeze + watchdog::GRACE),
        run_hook: true,
    })?;
    for (mount, file) in &opened {
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(file))
            .with_context(|| format!("syncfs {}", mount.display()))?;
    }
    check_stop(stop)?;

    let freeze_started = Instant::now();
    let frozen = Frozen::freeze(opened)?;
    let froze_in = freeze_started.elapsed();
    let deadline = freeze_started + max_freeze;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = volumes
            .iter()
            .map(|v| {
                scope.spawn(move || {
                    snapshot_one(
                        settings,
                        cinder,
                        v,
                        metadata,
                        host,
                        run_id,
                        freeze_started,
                        deadline,
                        stop,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::failed(None, anyhow!("snapshot thread panicked")))
            })
            .collect()
    });
    let thaw_started = Instant::now();
    let thawed = frozen.thaw();
    let thawed_in = thaw_started.elapsed();
    let freeze_ms = ms(freeze_started.elapsed());
    log::debug!(
        "freeze window {freeze_ms} ms: FIFREEZE {:.1} ms; {}; FITHAW {:.1} ms",
        millis(froze_in),
        outcomes
            .iter()
            .map(|o| o.timing.describe())
            .collect::<Vec<_>>()
            .join("; "),
        millis(thawed_in)
    );
    match dog.disarm() {
        Ok(None) => {}
        Ok(Some(fired)) => log::error!("the watchdog fired before volsnap thawed: {fired}"),
        Err(e) => log::warn!("{e:#}"),
    }
    log::info!("thawed after {freeze_ms} ms frozen");

    let mut problems: Vec<String> = Vec::new();
    if let Err(errors) = thawed {
        problems.extend(errors.iter().map(|e| e.to_string()));
    } else {
        runtime::clear_frozen(dir)?;
    }
    problems.extend(
        outcomes
            .iter()
            .filter_map(|o| o.error.as_ref().map(|e| format!("{e:#}"))),
    );
    if problems.is_empty() {
        return Ok(Taken {
            snapshots: outcomes
                .into_iter()
                .map(|o| o.report.expect("a good outcome has a snapshot"))
                .collect(),
            freeze_ms,
        });
    }
    let created: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.report.as_ref().map(|r| r.id.clone()))
        .collect();
    let cleanup = delete_all(cinder, &created);
    let mut message = problems.join("; ");
    match cleanup {
        Ok(()) if !created.is_empty() => message.push_str(&format!(
            "; deleted this run's snapshots ({})",
            created.join(", ")
        )),
        Ok(()) => {}
        Err(e) => message.push_str(&format!("; CLEANUP FAILED, delete by hand: {e:#}")),
    }
    Err(anyhow!(message))
}

struct Outcome {
    /// Set once Cinder accepted the snapshot (even if it later failed).
    report: Option<SnapshotReport>,
    error: Option<anyhow::Error>,
    timing: Timing,
}

impl Outcome {
    fn failed(report: Option<SnapshotReport>, error: anyhow::Error) -> Outcome {
        Outcome {
            report,
            error: Some(error),
            timing: Timing::default(),
        }
    }
}

/// Where one snapshot's share of the freeze window went, from the FIFREEZE
/// (for the debug log: `-v`).
#[derive(Default)]
struct Timing {
    /// The POST's 202 was in.
    accepted: Option<Duration>,
    /// The poll that saw `available` was in.
    available: Option<Duration>,
    polls: u32,
    /// Time spent inside the polls' requests (the rest is sleeping).
    in_polls: Duration,
}

impl Timing {
    fn describe(&self) -> String {
        let at =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} ms", millis(d)));
        format!(
            "POST 202 at {}, available seen at {} after {} polls ({:.1} ms in requests)",
            at(self.accepted),
            at(self.available),
            self.polls,
            millis(self.in_polls)
        )
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[allow(clippy::too_many_arguments)]
fn snapshot_one(
    settings: &Settings,
    cinder: &Cinder,
    volume: &Volume,
    metadata: &BTreeMap<String, String>,
    host: &str,
    run_id: &str,
    freeze_started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
) -> Outcome {
    let mut meta = metadata.clone();
    meta.insert("mount".into(), clip(&volume.mount.display().to_string()));
    let name = snapshot_name(&settings.cinder.name_prefix, host, &volume.mount, run_id);
    let created = match cinder.create_snapshot(&NewSnapshot {
        volume_id: volume.volume_id.clone(),
        name: name.clone(),
        description: Some(format!(
            "volsnap {} backup of {} on {host}",
            meta["consistency"],
            volume.mount.display()
        )),
        metadata: meta,
    }) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::failed(
                None,
                anyhow!(e).context(format!("cannot snapshot volume {}", volume.volume_id)),
            )
        }
    };
    let mut timing = Timing {
        accepted: Some(freeze_started.elapsed()),
        ..Timing::default()
    };
    let mut report = SnapshotReport {
        id: created.id.clone(),
        name,
        volume_id: volume.volume_id.clone(),
        mount: volume.mount.clone(),
        status: created.status.clone(),
    };
    let started = Instant::now();
    let mut pause = POLL_FAST;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Outcome::failed(Some(report), anyhow!("interrupted by a signal"));
        }
        if Instant::now() >= deadline {
            return Outcome::failed(
                Some(report),
                anyhow!(
                    "snapshot {} of volume {} still {} at max_freeze ({} s)",
                    created.id,
                    volume.volume_id,
                    report_status(&created.status),
                    settings.cinder.max_freeze.as_secs_f64()
                ),
            );
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        if started.elapsed() > POLL_FAST_FOR {
            pause = (pause * 3 / 2).min(POLL_CAP);
        }
        let poll_started = Instant::now();
        let polled = cinder.snapshot(&created.id);
        timing.polls += 1;
        timing.in_polls += poll_started.elapsed();
        match polled {
            Ok(s) if s.status == "available" => {
                timing.available = Some(freeze_started.elapsed());
                log::debug!(
                    "snapshot {} available after {} ms",
                    s.id,
                    started.elapsed().as_millis()
                );
                report.status = s.status;
                return Outcome {
                    report: Some(report),
                    error: None,
                    timing,
                };
            }
            Ok(s) if s.status.starts_with("error") => {
                report.status = s.status.clone();
                return Outcome::failed(
                    Some(report),
                    anyhow!(
                        "Cinder reports snapshot {} of volume {} as {}",
                        s.id,
                        volume.volume_id,
                        s.status
                    ),
                );
            }
            Ok(s) => report.status = s.status,
            // One slow or failed poll is not the end; the deadline is.
            Err(e) => log::warn!("polling snapshot {}: {e}", created.id),
        }
    }
}

fn report_status(status: &str) -> &str {
    if status.is_empty() {
        "creating"
    } else {
        status
    }
}

/// Deletes snapshots, waiting for each to leave `creating` first (Cinder
/// refuses to delete one that is still being made).
fn delete_all(cinder: &Cinder, ids: &[String]) -> Result<()> {
    let deadline = Instant::now() + CLEANUP_WAIT;
    let mut failures = Vec::new();
    for id in ids {
        let result = (|| -> Result<()> {
            // Marked first, so that if deletion never happens nobody trusts it.
            let _ = cinder.update_snapshot_metadata(
                id,
                &BTreeMap::from([("consistency".to_string(), "none-failed-run".to_string())]),
            );
            loop {
                let s = cinder.snapshot(id)?;
                if s.status != "creating" {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "snapshot {id} still creating after {} s",
                        CLEANUP_WAIT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            cinder.delete_snapshot(id)?;
            cinder.wait_snapshot(id, Target::Gone, deadline)?;
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{id}: {e:#}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

/// Refuses to start when stdout or stderr is a file on a mount about to be
/// frozen: a log line there would hang volsnap inside its own freeze.
fn check_std_streams(mounts: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (fd, name) in [(1, "stdout"), (2, "stderr")] {
        let Ok(stat) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        for mount in mounts {
            let dev = std::fs::metadata(mount)?.dev();
            if stat.st_dev == dev && (stat.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG {
                bail!(
                    "{name} is a file on {}, which volsnap is about to freeze: writing a log line there would hang it; send {name} elsewhere",
                    mount.display()
                );
            }
        }
    }
    Ok(())
}

/// Explicit ids win; other mounts are discovered from their disk's serial.
fn resolve_volumes(
    settings: &Settings,
    cinder: &Cinder,
    mounts: &[(PathBuf, PathBuf, mounts::MountEntry)],
    sys_root: &Path,
) -> Result<Vec<Volume>> {
    let mut all_volumes = None;
    let mut out = Vec::new();
    for (configured, real, entry) in mounts {
        let id = match settings.cinder.volumes.get(configured) {
            Some(id) => id.clone(),
            None => {
                if all_volumes.is_none() {
                    all_volumes = Some(cinder.volumes().context("listing volumes for discovery")?);
                }
                let list = all_volumes.as_ref().expect("just listed");
                let (id, dev) = discover::volume_of(sys_root, entry, list)?;
                log::info!("{} is on {} → volume {id}", configured.display(), dev.disk);
                id
            }
        };
        let volume = cinder
            .volume(&id)
            .with_context(|| format!("volume {id} of {}", configured.display()))?;
        if volume.status != "in-use" && volume.status != "available" {
            bail!(
                "volume {id} of {} is {}; a snapshot needs it in-use or available",
                configured.display(),
                volume.status
            );
        }
        out.push(Volume {
            mount: real.clone(),
            volume_id: id,
            status: volume.status,
        });
    }
    Ok(out)
}

/// What every snapshot of the run carries. Hook values come last and never
/// override volsnap's own keys (a clashing key gets a `hook_` prefix).
fn metadata(
    settings: &Settings,
    consistency: Consistency,
    host: &str,
    run_id: &str,
    hook_values: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut meta: BTreeMap<String, String> = settings.cinder.metadata.clone();
    for (k, v) in [
        ("created_by", "volsnap"),
        ("volsnap_version", env!("CARGO_PKG_VERSION")),
        ("datastore", settings.datastore.name()),
        ("consistency", consistency.name()),
        ("host", host),
        ("volsnap_run", run_id),
    ] {
        meta.insert(k.to_string(), clip(v));
    }
    for (k, v) in hook_values {
        let key = if meta.contains_key(k) || k == "freeze_ms" || k == "mount" {
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
        meta.insert(key, clip(v));
    }
    meta
}

/// Cuts to Cinder's 255, on a character boundary.
fn clip(value: &str) -> String {
    if value.len() <= METADATA_MAX {
        return value.to_string();
    }
    let mut end = METADATA_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

fn snapshot_name(prefix: &str, host: &str, mount: &Path, run_id: &str) -> String {
    let slug: String = mount
        .display()
        .to_string()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    clip(&format!("{prefix}-{host}-{slug}-{run_id}"))
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// This host's volsnap snapshots, newest first.
pub fn list(cinder: &Cinder) -> Result<Vec<Snapshot>> {
    let filter = SnapshotFilter {
        metadata: BTreeMap::from([
            ("created_by".to_string(), "volsnap".to_string()),
            ("host".to_string(), hostname()),
        ]),
        ..SnapshotFilter::default()
    };
    let mut snaps = cinder.snapshots(&filter).context("listing snapshots")?;
    snaps.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(snaps)
}

/// Applies `[retention]` to this host's volsnap snapshots, a run at a time
/// (the snapshots of one run stand or fall together). Returns the deleted ids.
pub fn prune(settings: &Settings, cinder: &Cinder, dry_run: bool) -> Result<Vec<String>> {
    let snaps = list(cinder)?;
    let mut runs: BTreeMap<String, Vec<&Snapshot>> = BTreeMap::new();
    for s in &snaps {
        let run = s
            .metadata
            .get("volsnap_run")
            .cloned()
            .unwrap_or_else(|| s.id.clone());
        runs.entry(run).or_default().push(s);
    }
    let keys: Vec<&String> = runs.keys().collect();
    let times: Vec<jiff::Timestamp> = keys
        .iter()
        .map(|k| {
            runs[*k]
                .iter()
                .filter_map(|s| s.created_at.as_deref().and_then(parse_cinder_time))
                .max()
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        })
        .collect();
    let mut deleted = Vec::new();
    for i in retention::to_delete(&settings.retention, &times) {
        for s in &runs[keys[i]] {
            if !dry_run {
                cinder
                    .delete_snapshot(&s.id)
                    .with_context(|| format!("deleting snapshot {}", s.id))?;
                log::info!("retention: deleted snapshot {}", s.id);
            }
            deleted.push(s.id.clone());
        }
    }
    Ok(deleted)
}

/// Cinder writes UTC without an offset: `2026-11-25T22:46:21.000000`.
pub fn parse_cinder_time(text: &str) -> Option<jiff::Timestamp> {
    let text = text.trim_end_matches('Z');
    let civil: jiff::civil::DateTime = text.parse().ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_clipping() {
        assert_eq!(
            snapshot_name(
                "volsnap",
                "db1",
                Path::new("/var/lib/my sql"),
                "20261125T224600Z"
            ),
            "volsnap-db1-var_lib_my_sql-20261125T224600Z"
        );
        let long = "é".repeat(200);
        let c = clip(&long);
        assert!(c.len() <= 255 && c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn cinder_times() {
        let t = parse_cinder_time("2026-11-25T22:46:21.000000").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T22:46:21Z");
    }
}
