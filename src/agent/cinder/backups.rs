//! After a good run: a Cinder backup (cinder-backup's copy into another
//! store) of each of its snapshots, full or incremental on the volume's
//! chain; their labels, what killed runs left, and retention over chains.
//!
//! Two phases, as for snapshots: a backup is created `consistency=pending`
//! and gets the run's final label only once it is `available`. A run killed
//! while waiting leaves a `pending` backup that the next run deletes.
//! Nothing here runs inside the freeze or before the database is released.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;

use super::outcome::{Consistency, SnapshotReport};
use super::plan::hostname;
use super::runs::{parse_cinder_time, run_of_tags, State};
use super::verdict::{FAILED_RUN, PENDING};
use crate::config::{BackupMode, BackupSettings, FullEvery};
use crate::openstack::cinder::{Cinder, Schedule, Target, Until};
use crate::openstack::cinder_backups::{Backup, BackupApi, NewBackup};
use crate::runtime;

/// Backups take minutes: a poll every few seconds is plenty.
const BACKUP_POLL: Schedule = Schedule {
    first: Duration::from_millis(500),
    flat_for: Duration::ZERO,
    cap: Duration::from_secs(5),
};
/// How often a long backup says it is still going.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// How long a deletion may take before retention moves on.
const DELETE_WAIT: Duration = Duration::from_secs(300);
/// Where the labels live when the cloud has no backup metadata (< 3.43).
const DESCRIPTION_TAG: &str = "volsnap:";
/// The keys a backup is labelled with (metadata, and the description).
const TAG_KEYS: [&str; 5] = [
    "created_by",
    "host",
    "volsnap_run",
    "volsnap_lock",
    "consistency",
];

/// One backup of this run.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub snapshot_id: String,
    pub volume_id: String,
    pub mount: std::path::PathBuf,
    pub incremental: bool,
    pub status: String,
    /// Swift objects (or the driver's units) it stored, when Cinder says.
    pub object_count: Option<u64>,
    pub elapsed_ms: u64,
    /// The snapshot was deleted once the backup was good (`keep_snapshot = false`).
    pub snapshot_deleted: bool,
}

/// What the backups of a run came to.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub backups: Vec<BackupReport>,
    /// Why some backup is not good; the snapshots stay (exit 4).
    pub error: Option<String>,
}

/// volsnap's labels of a backup: its metadata, or (a cloud below 3.43) the
/// `volsnap: k=v …` words of its description.
pub fn tags(b: &Backup) -> BTreeMap<String, String> {
    if b.metadata.contains_key("created_by") {
        return b.metadata.clone();
    }
    b.description
        .as_deref()
        .and_then(|d| d.strip_prefix(DESCRIPTION_TAG))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn describe(tags: &BTreeMap<String, String>) -> String {
    let words: Vec<String> = TAG_KEYS
        .iter()
        .filter_map(|k| tags.get(*k).map(|v| format!("{k}={}", v.replace(' ', "_"))))
        .collect();
    let text = format!("{DESCRIPTION_TAG} {}", words.join(" "));
    text.chars().take(255).collect()
}

/// Good: `available` and labelled with a final consistency.
pub fn state(b: &Backup) -> State {
    let t = tags(b);
    let label = t.get("consistency").map(String::as_str);
    if b.status == "available" && matches!(label, Some("application" | "filesystem" | "crash")) {
        return State::Good;
    }
    if label == Some(PENDING) {
        if let Some(lock) = t.get("volsnap_lock") {
            if runtime::run_is_live(Path::new(lock), run_of_tags(&t, &b.id)) {
                return State::InProgress;
            }
        }
    }
    State::Incomplete
}

/// This host's volsnap backups, oldest first.
pub fn list(cinder: &Cinder, api: BackupApi) -> Result<Vec<Backup>> {
    let host = hostname();
    let mut ours: Vec<Backup> = cinder
        .backups(api)
        .map_err(|e| anyhow!("listing backups: {e}"))?
        .into_iter()
        .filter(|b| {
            let t = tags(b);
            t.get("created_by").map(String::as_str) == Some("volsnap")
                && t.get("host") == Some(&host)
        })
        .collect();
    ours.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(ours)
}

/// Whether the next backup of `volume` is an incremental: the volume's
/// newest good backup chain (a full and the incrementals after it) exists
/// and is not due for a new full.
pub fn next_is_incremental(
    settings: &BackupSettings,
    ours: &[Backup],
    volume: &str,
    now: crate::time::Timestamp,
) -> bool {
    if settings.mode != BackupMode::Incremental {
        return false;
    }
    let good: Vec<&Backup> = ours
        .iter()
        .filter(|b| b.volume_id == volume && state(b) == State::Good)
        .collect();
    let Some(full_at) = good.iter().rposition(|b| !b.is_incremental) else {
        return false;
    };
    let incrementals = (good.len() - full_at - 1) as u64;
    match settings.full_every {
        None => true,
        Some(FullEvery::Count(n)) => incrementals < u64::from(n),
        Some(FullEvery::Age(age)) => good[full_at]
            .created_at
            .as_deref()
            .and_then(parse_cinder_time)
            .is_some_and(|t| now.seconds_since(t).abs() < age.as_secs_f64()),
    }
}

/// Everything a run's backups need from the run.
pub struct Request<'a> {
    pub settings: &'a BackupSettings,
    pub name_prefix: &'a str,
    pub run: &'a str,
    /// The run's snapshot metadata (`consistency=pending` among it).
    pub metadata: &'a BTreeMap<String, String>,
    pub consistency: Consistency,
    pub snapshots: &'a [SnapshotReport],
    pub stop: &'static AtomicBool,
}

/// Backs up every snapshot of a good run and waits for them (all together
/// bounded by `backup_timeout`). Never fails the run's snapshots: a problem
/// is the outcome's `error`.
pub fn take(cinder: &Cinder, req: &Request) -> Outcome {
    let mut outcome = Outcome::default();
    let api = match cinder.backup_api() {
        Ok(api) => api,
        Err(e) => {
            outcome.error = Some(format!("the backup API did not answer: {e}"));
            return outcome;
        }
    };
    let ours = match list(cinder, api) {
        Ok(o) => o,
        Err(e) => {
            outcome.error = Some(format!("{e:#}"));
            return outcome;
        }
    };
    let started = Instant::now();
    let deadline = started + req.settings.timeout;
    let mut labels: BTreeMap<String, String> = req
        .metadata
        .iter()
        .filter(|(k, _)| {
            TAG_KEYS.contains(&k.as_str()) || *k == "datastore" || *k == "volsnap_version"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("consistency".into(), PENDING.into());
    let now = crate::time::Timestamp::now();
    let mut problems = Vec::new();
    let mut created = Vec::new();
    for s in req.snapshots {
        let incremental = next_is_incremental(req.settings, &ours, &s.volume_id, now);
        let mut meta = labels.clone();
        meta.insert("mount".into(), s.mount.display().to_string());
        let new = NewBackup {
            volume_id: s.volume_id.clone(),
            snapshot_id: s.id.clone(),
            name: s
                .name
                .replacen(req.name_prefix, &format!("{}-backup", req.name_prefix), 1),
            description: describe(&meta),
            incremental,
            force: true,
            container: req.settings.container.clone(),
            metadata: meta,
        };
        match cinder.create_backup(api, &new) {
            Ok(b) => {
                log::info!(
                    "{} backup {} of snapshot {} ({}) started",
                    if incremental { "incremental" } else { "full" },
                    b.id,
                    s.id,
                    s.mount.display()
                );
                created.push((s, b, new.metadata));
            }
            Err(e) => problems.push(format!("cannot back up snapshot {}: {e}", s.id)),
        }
    }
    for (s, b, mut meta) in created {
        let one_started = Instant::now();
        let result = wait_available(cinder, api, &b.id, deadline, req.stop);
        let mut report = BackupReport {
            id: b.id.clone(),
            snapshot_id: s.id.clone(),
            volume_id: s.volume_id.clone(),
            mount: s.mount.clone(),
            incremental: b.is_incremental,
            status: "creating".into(),
            object_count: None,
            // From the first POST: the backups run side by side.
            elapsed_ms: started.elapsed().as_millis() as u64,
            snapshot_deleted: false,
        };
        match result {
            Ok(done) => {
                report.status = done.status.clone();
                report.object_count = done.object_count;
                report.incremental = done.is_incremental;
                meta.insert("consistency".into(), req.consistency.name().into());
                if let Err(e) = cinder.update_backup(api, &b.id, &describe(&meta), &meta) {
                    problems.push(format!(
                        "backup {} is available but could not be labelled: {e}",
                        b.id
                    ));
                } else if !req.settings.keep_snapshot {
                    match cinder.delete_snapshot(&s.id) {
                        Ok(()) => report.snapshot_deleted = true,
                        Err(e) => log::warn!(
                            "backup {} is good; its snapshot {} stays (keep_snapshot = false, but: {e})",
                            b.id,
                            s.id
                        ),
                    }
                }
                log::info!(
                    "backup {} of snapshot {} available after {:.1} s",
                    b.id,
                    s.id,
                    one_started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                let now = cinder.backup(api, &b.id).ok();
                report.status = now.as_ref().map_or("unknown".into(), |b| b.status.clone());
                let reason = now
                    .as_ref()
                    .and_then(|b| b.fail_reason.clone())
                    .map(|r| format!(" (Cinder: {r})"))
                    .unwrap_or_default();
                problems.push(format!(
                    "backup {} of snapshot {} failed: {e:#}{reason}; the snapshot stays",
                    b.id, s.id
                ));
                if report.status == "error" {
                    // Useless and counted against the quota: removed now.
                    let mut mark = meta.clone();
                    mark.insert("consistency".into(), FAILED_RUN.into());
                    let _ = cinder.update_backup(api, &b.id, &describe(&mark), &mark);
                    if let Err(e) = cinder.delete_backup(&b.id) {
                        log::warn!("failed backup {} not deleted: {e}", b.id);
                    }
                }
            }
        }
        outcome.backups.push(report);
    }
    if !problems.is_empty() {
        outcome.error = Some(problems.join("; "));
    }
    outcome
}

fn wait_available(
    cinder: &Cinder,
    api: BackupApi,
    id: &str,
    deadline: Instant,
    stop: &'static AtomicBool,
) -> Result<Backup> {
    let until = Until {
        deadline,
        schedule: BACKUP_POLL,
        stop: Some(stop),
        stats: None,
    };
    let started = Instant::now();
    let mut said = Instant::now();
    let progress = std::cell::Cell::new((0u32, Duration::ZERO));
    let watched = Until {
        stats: Some(&progress),
        ..until
    };
    // The poll count is the hook for progress lines: the wait itself stays
    // the one poll loop.
    let mut last_polls = 0;
    let result = loop {
        let slice = Until {
            deadline: deadline.min(Instant::now() + PROGRESS_EVERY),
            ..watched
        };
        match cinder.wait_backup(api, id, Target::Status("available"), &slice) {
            Ok(Some(b)) => break Ok(b),
            Ok(None) => break Err(anyhow!("backup {id} vanished")),
            Err(e) if Instant::now() < deadline && is_deadline(&e) => {
                let (polls, _) = progress.get();
                if polls > last_polls && said.elapsed() >= PROGRESS_EVERY / 2 {
                    log::info!(
                        "backup {id} still creating after {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                    said = Instant::now();
                }
                last_polls = polls;
            }
            Err(e) => break Err(e),
        }
    };
    result
}

fn is_deadline(e: &anyhow::Error) -> bool {
    format!("{e}").ends_with("deadline reached")
}

/// Leftover backups: labelled `pending` (or failed) by a run of this
/// runtime dir that is not going any more.
pub fn leftovers<'a>(ours: &'a [Backup], lock: &Path) -> Vec<&'a Backup> {
    ours.iter()
        .filter(|b| {
            let t = tags(b);
            matches!(
                t.get("consistency").map(String::as_str),
                Some(PENDING | FAILED_RUN)
            ) && t.get("volsnap_lock").map_or(true, |l| Path::new(l) == lock)
                && state(b) == State::Incomplete
        })
        .collect()
}

/// Ids removed, and (id, why) of those left.
pub type Removed = (Vec<String>, Vec<(String, String)>);

/// Deletes what killed runs left (a backup still `creating` is waited for
/// up to `wait`, then left for the next run).
pub fn clean(cinder: &Cinder, runtime_dir: &Path, wait: Duration) -> Result<Removed> {
    let api = cinder
        .backup_api()
        .map_err(|e| anyhow!("the backup API did not answer: {e}"))?;
    let ours = list(cinder, api)?;
    let lock = runtime::lock_path(runtime_dir);
    let deadline = Instant::now() + wait;
    let mut removed = Vec::new();
    let mut remaining = Vec::new();
    // Newest first: an incremental goes before its parent.
    for b in leftovers(&ours, &lock).into_iter().rev() {
        let result = (|| -> Result<()> {
            let until = Until {
                deadline,
                schedule: BACKUP_POLL,
                stop: None,
                stats: None,
            };
            if cinder
                .wait_backup(api, &b.id, Target::Left("creating"), &until)?
                .is_none()
            {
                return Ok(());
            }
            cinder.delete_backup(&b.id)?;
            cinder.wait_backup_gone(&b.id, Instant::now() + DELETE_WAIT)
        })();
        match result {
            Ok(()) => {
                log::warn!(
                    "removed backup {} of volume {}: left {} by run {} (killed or failed)",
                    b.id,
                    b.volume_id,
                    tags(b).get("consistency").map_or("?", String::as_str),
                    run_of_tags(&tags(b), &b.id)
                );
                removed.push(b.id.clone());
            }
            Err(e) => {
                log::warn!(
                    "backup {} left by an earlier run not removed yet: {e:#}",
                    b.id
                );
                remaining.push((b.id.clone(), format!("{e:#}")));
            }
        }
    }
    Ok((removed, remaining))
}

/// Deletes the backups of runs that retention drops, never breaking a
/// chain: a backup goes only if every later backup of its chain (the
/// incrementals up to the volume's next full) goes too; children first,
/// each gone before its parent is asked. Cinder's refusal (400: it has
/// incrementals, or it is busy) keeps that backup and the older ones of its
/// chain. Returns (deleted, kept with why).
pub fn prune(
    cinder: &Cinder,
    ours: &[Backup],
    drop: &std::collections::BTreeSet<String>,
    dry_run: bool,
) -> Removed {
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    let mut volumes: BTreeMap<&str, Vec<&Backup>> = BTreeMap::new();
    for b in ours {
        volumes.entry(b.volume_id.as_str()).or_default().push(b);
    }
    for chain in volumes.values() {
        // Newest first; `blocked` once something later in the chain stays.
        let mut blocked = false;
        for b in chain.iter().rev() {
            if !drop.contains(&b.id) {
                blocked = true;
            } else if blocked {
                kept.push((
                    b.id.clone(),
                    "a later incremental of its chain is kept".to_string(),
                ));
            } else if dry_run {
                deleted.push(b.id.clone());
            } else {
                let gone = cinder
                    .delete_backup(&b.id)
                    .map_err(anyhow::Error::new)
                    .and_then(|()| cinder.wait_backup_gone(&b.id, Instant::now() + DELETE_WAIT));
                match gone {
                    Ok(()) => {
                        log::info!("retention: deleted backup {}", b.id);
                        deleted.push(b.id.clone());
                    }
                    Err(e) => {
                        log::warn!("retention: backup {} kept: {e:#}", b.id);
                        kept.push((b.id.clone(), format!("{e:#}")));
                        blocked = true;
                    }
                }
            }
            if !b.is_incremental {
                // A full ends the chain: older backups are another chain.
                blocked = false;
            }
        }
    }
    (deleted, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str, incremental: bool, created: &str, label: &str) -> Backup {
        let metadata = BTreeMap::from([
            ("created_by".to_string(), "volsnap".to_string()),
            ("consistency".to_string(), label.to_string()),
        ]);
        Backup {
            id: id.into(),
            name: None,
            description: None,
            status: "available".into(),
            volume_id: "v".into(),
            snapshot_id: None,
            size: 1,
            object_count: None,
            is_incremental: incremental,
            has_dependent_backups: false,
            container: None,
            created_at: Some(created.into()),
            data_timestamp: None,
            fail_reason: None,
            metadata,
        }
    }

    #[test]
    fn labels_survive_in_the_description() {
        let meta = BTreeMap::from([
            ("created_by".to_string(), "volsnap".to_string()),
            ("host".to_string(), "db 1".to_string()),
            ("consistency".to_string(), "pending".to_string()),
            ("other".to_string(), "x".to_string()),
        ]);
        let mut b = backup("b", false, "2026-12-01T00:00:00", "x");
        b.metadata.clear();
        b.description = Some(describe(&meta));
        assert_eq!(
            b.description.as_deref(),
            Some("volsnap: created_by=volsnap host=db_1 consistency=pending")
        );
        assert_eq!(tags(&b)["consistency"], "pending");
        assert_eq!(tags(&b)["host"], "db_1");
    }

    #[test]
    fn chains_decide_incremental() {
        let mut settings = BackupSettings {
            mode: BackupMode::Incremental,
            container: None,
            full_every: Some(FullEvery::Count(2)),
            keep_snapshot: true,
            timeout: Duration::from_secs(60),
        };
        let now: crate::time::Timestamp = "2026-12-03T00:00:00Z".parse().unwrap();
        let full = backup("f", false, "2026-12-01T00:00:00", "application");
        let inc = backup("i", true, "2026-12-02T00:00:00", "application");
        let pending = backup("p", false, "2026-12-02T12:00:00", "pending");
        assert!(!next_is_incremental(&settings, &[], "v", now));
        assert!(!next_is_incremental(
            &settings,
            std::slice::from_ref(&pending),
            "v",
            now
        ));
        assert!(next_is_incremental(
            &settings,
            std::slice::from_ref(&full),
            "v",
            now
        ));
        assert!(!next_is_incremental(
            &settings,
            std::slice::from_ref(&full),
            "other",
            now
        ));
        assert!(next_is_incremental(
            &settings,
            &[full.clone(), inc.clone()],
            "v",
            now
        ));
        let two = [full.clone(), inc.clone(), inc.clone()];
        assert!(!next_is_incremental(&settings, &two, "v", now));
        settings.full_every = Some(FullEvery::Age(Duration::from_secs(86400)));
        assert!(!next_is_incremental(
            &settings,
            std::slice::from_ref(&full),
            "v",
            now
        ));
        settings.full_every = Some(FullEvery::Age(Duration::from_secs(3 * 86400)));
        assert!(next_is_incremental(
            &settings,
            std::slice::from_ref(&full),
            "v",
            now
        ));
        settings.mode = BackupMode::Full;
        assert!(!next_is_incremental(&settings, &[full], "v", now));
    }

    #[test]
    fn retention_never_breaks_a_chain() {
        // Chain 1: f1 ← i1 ← i2; chain 2: f2 ← i3.
        let ours = [
            backup("f1", false, "2026-12-01T00:00:00", "application"),
            backup("i1", true, "2026-12-01T01:00:00", "application"),
            backup("i2", true, "2026-12-01T02:00:00", "application"),
            backup("f2", false, "2026-12-02T00:00:00", "application"),
            backup("i3", true, "2026-12-02T01:00:00", "application"),
        ];
        let cinder = Cinder::new(
            crate::openstack::Session::with_token(
                crate::openstack::http::Http::new(&Default::default()).unwrap(),
                crate::secret::Secret::new("t"),
            ),
            "http://127.0.0.1:9/v3/p".parse().unwrap(),
        );
        let drop = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
        // i2 stays: f1 and i1 stay with it.
        let (deleted, kept) = prune(&cinder, &ours, &drop(&["f1", "i1"]), true);
        assert!(deleted.is_empty());
        assert_eq!(kept.len(), 2);
        // The whole first chain goes, newest first; the second is untouched.
        let (deleted, kept) = prune(&cinder, &ours, &drop(&["f1", "i1", "i2"]), true);
        assert_eq!(deleted, ["i2", "i1", "f1"]);
        assert!(kept.is_empty());
        // An incremental alone may go when nothing later depends on it.
        let (deleted, _) = prune(&cinder, &ours, &drop(&["i3"]), true);
        assert_eq!(deleted, ["i3"]);
    }
}
