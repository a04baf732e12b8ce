//! This host's volsnap snapshots, as runs: which are good backups, which are
//! a run still going, and which a killed or failed run left — found here and
//! removed by `backup`, `prune` and `list`. Retention counts good runs only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::plan::hostname;
use super::verdict::{self, FAILED_RUN, PENDING};
use crate::openstack::cinder::{Cinder, Snapshot, SnapshotFilter};
use crate::runtime;

/// What a snapshot is to volsnap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Labelled with its final consistency and its freeze window: a backup.
    Good,
    /// Its run is still going (it holds its lock).
    InProgress,
    /// Left by a run that died or failed: never a backup.
    Incomplete,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Good => "good",
            State::InProgress => "in-progress",
            State::Incomplete => "incomplete",
        }
    }
}

pub fn run_of(s: &Snapshot) -> &str {
    run_of_tags(&s.metadata, &s.id)
}

/// The run a snapshot's or backup's labels name (its own id when none).
pub fn run_of_tags<'a>(tags: &'a BTreeMap<String, String>, id: &'a str) -> &'a str {
    tags.get("volsnap_run").map_or(id, String::as_str)
}

/// Good means both halves of the second phase landed: a final label and
/// `freeze_ms`, set in one update. (A label without `freeze_ms` is what
/// versions before the two phases left when killed after the 202.)
pub fn state(s: &Snapshot) -> State {
    let label = s.metadata.get("consistency").map(String::as_str);
    let final_label = matches!(label, Some("application" | "filesystem" | "crash"));
    let timed = s
        .metadata
        .get("freeze_ms")
        .is_some_and(|v| v.parse::<u64>().is_ok());
    // `backing-up`: cinder-backup is copying it (`[cinder] backup`); it is
    // the same good image.
    if final_label && timed && matches!(s.status.as_str(), "available" | "backing-up") {
        return State::Good;
    }
    if label == Some(PENDING) {
        if let Some(lock) = s.metadata.get("volsnap_lock") {
            if runtime::run_is_live(Path::new(lock), run_of(s)) {
                return State::InProgress;
            }
        }
    }
    State::Incomplete
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

/// What a killed or failed run left, and what became of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cleanup {
    pub removed: Vec<String>,
    /// Still there (id, why): the next run tries again.
    pub remaining: Vec<(String, String)>,
}

/// Leftovers: labelled `pending` or `none-failed-run`, not of a live run,
/// and of a run that used this runtime dir (`lock` is its lock file): a
/// second config on the same host (tests run many) keeps its own. Snapshots
/// with an old-style label but no `freeze_ms` are only shown as incomplete,
/// never deleted: they may be somebody's only copy.
pub fn leftovers<'a>(snaps: &'a [Snapshot], lock: &Path) -> Vec<&'a Snapshot> {
    snaps
        .iter()
        .filter(|s| {
            matches!(
                s.metadata.get("consistency").map(String::as_str),
                Some(PENDING | FAILED_RUN)
            ) && same_runtime_dir(&s.metadata, lock)
                && state(s) == State::Incomplete
        })
        .collect()
}

/// Finds and removes what earlier runs left, waiting up to `wait` for
/// snapshots still `creating`.
pub fn clean(cinder: &Cinder, runtime_dir: &Path, wait: Duration) -> Result<Cleanup> {
    let snaps = list(cinder)?;
    let left = leftovers(&snaps, &runtime::lock_path(runtime_dir));
    let mut cleanup = Cleanup::default();
    if left.is_empty() {
        return Ok(cleanup);
    }
    // Who thawed the run being removed, when its watchdog did.
    if let Some(r) = runtime::read_watchdog_record(runtime_dir) {
        if left.iter().any(|s| run_of(s) == r.run) {
            log::warn!("run {} was thawed by its watchdog: {}", r.run, r.summary);
        }
    }
    let ids: Vec<String> = left.iter().map(|s| s.id.clone()).collect();
    cleanup.remaining = verdict::discard(cinder, &ids, wait);
    for s in &left {
        if let Some((_, why)) = cleanup.remaining.iter().find(|(id, _)| *id == s.id) {
            log::warn!(
                "snapshot {} left by an earlier run not removed yet: {why}",
                s.id
            );
            continue;
        }
        log::warn!(
            "removed snapshot {} of volume {}: left {} by run {} (killed or failed)",
            s.id,
            s.volume_id,
            s.metadata.get("consistency").map_or("?", String::as_str),
            run_of(s)
        );
        cleanup.removed.push(s.id.clone());
    }
    Ok(cleanup)
}

/// Whether a snapshot's or backup's labels say it was made with the run lock
/// `lock`, i.e. by a config with this runtime dir. What an older volsnap
/// made carries no lock label and counts for every config of the host.
pub(super) fn same_runtime_dir(labels: &BTreeMap<String, String>, lock: &Path) -> bool {
    labels
        .get("volsnap_lock")
        .map_or(true, |l| Path::new(l) == lock)
}

/// Cinder writes UTC without an offset: `2026-11-25T22:46:21.000000`.
pub fn parse_cinder_time(text: &str) -> Option<crate::time::Timestamp> {
    crate::time::Timestamp::parse_utc_civil(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(meta: &[(&str, &str)], status: &str) -> Snapshot {
        Snapshot {
            id: "s".into(),
            name: None,
            description: None,
            status: status.into(),
            volume_id: "v".into(),
            size: 1,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: None,
            progress: None,
        }
    }

    #[test]
    fn only_a_final_label_with_freeze_ms_is_good() {
        let good = [("consistency", "application"), ("freeze_ms", "312")];
        assert_eq!(state(&snap(&good, "available")), State::Good);
        assert_eq!(state(&snap(&good, "creating")), State::Incomplete);
        assert_eq!(state(&snap(&good, "backing-up")), State::Good);
        // What a run killed after the 202 left before the two phases.
        let torn = [("consistency", "application")];
        assert_eq!(state(&snap(&torn, "available")), State::Incomplete);
        let pending = [("consistency", "pending"), ("freeze_ms", "1")];
        assert_eq!(state(&snap(&pending, "available")), State::Incomplete);
        assert_eq!(
            state(&snap(&[("consistency", "none-failed-run")], "available")),
            State::Incomplete
        );
        let lock = Path::new("/run/volsnap/lock");
        assert_eq!(leftovers(&[snap(&torn, "available")], lock).len(), 0);
        assert_eq!(leftovers(&[snap(&pending, "available")], lock).len(), 1);
        // Another runtime dir's run is that config's to clean up.
        let theirs = [
            ("consistency", "pending"),
            ("volsnap_lock", "/elsewhere/lock"),
        ];
        assert_eq!(leftovers(&[snap(&theirs, "available")], lock).len(), 0);
        let ours = [
            ("consistency", "pending"),
            ("volsnap_lock", "/run/volsnap/lock"),
        ];
        assert_eq!(leftovers(&[snap(&ours, "available")], lock).len(), 1);
        // Retention counts the same runs: this runtime dir's, and those of
        // a volsnap too old to label them.
        let labels = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(same_runtime_dir(&labels(&ours), lock));
        assert!(!same_runtime_dir(&labels(&theirs), lock));
        assert!(same_runtime_dir(&labels(&good), lock));
    }

    #[test]
    fn cinder_times() {
        let t = parse_cinder_time("2026-11-25T22:46:21.000000").unwrap();
        assert_eq!(t.to_string(), "2026-11-25T22:46:21Z");
    }
}
