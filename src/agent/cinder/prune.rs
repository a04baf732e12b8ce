//! Retention over Cinder runs: the snapshots and backups of one run
//! counted, kept and deleted together.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use super::backups;
use super::runs::{list, parse_cinder_time, run_of, run_of_tags, same_runtime_dir, state, State};
use crate::config::{BackupMode, Settings};
use crate::openstack::cinder::{Cinder, Snapshot};
use crate::openstack::cinder_backups::Backup;
use crate::{retention, runtime};

/// Applies `[retention]` to the good runs of this host that used this
/// runtime dir: a second config on the host (its own runtime dir, as its
/// own lock needs) keeps its own count, as for leftovers. The snapshots and
/// backups of one run stand or fall together; runs that are not good are
/// not counted, so they never push a good run out. A backup another kept
/// backup depends on stays (see [`backups::prune`]). Returns the deleted
/// snapshot and backup ids.
pub fn prune(settings: &Settings, cinder: &Cinder, dry_run: bool) -> Result<Pruned> {
    let snaps = list(cinder)?;
    let ours = if settings.cinder.backup.mode == BackupMode::Off {
        Vec::new()
    } else {
        let api = cinder
            .backup_api()
            .map_err(|e| anyhow::anyhow!("the backup API did not answer: {e}"))?;
        backups::list(cinder, api)?
    };
    #[derive(Default)]
    struct Run<'a> {
        snaps: Vec<&'a Snapshot>,
        backups: Vec<&'a Backup>,
    }
    let mut runs: BTreeMap<&str, Run> = BTreeMap::new();
    for s in &snaps {
        runs.entry(run_of(s)).or_default().snaps.push(s);
    }
    let backup_tags: Vec<BTreeMap<String, String>> = ours.iter().map(backups::tags).collect();
    for (b, t) in ours.iter().zip(&backup_tags) {
        runs.entry(run_of_tags(t, &b.id))
            .or_default()
            .backups
            .push(b);
    }
    let lock = runtime::lock_path(&settings.runtime_dir);
    runs.retain(|_, r| {
        r.snaps
            .iter()
            .all(|s| state(s) == State::Good && same_runtime_dir(&s.metadata, &lock))
            && r.backups.iter().all(|b| {
                backups::state(b) == State::Good && same_runtime_dir(&backups::tags(b), &lock)
            })
    });
    let keys: Vec<&str> = runs.keys().copied().collect();
    let times: Vec<crate::time::Timestamp> = keys
        .iter()
        .map(|k| {
            let r = &runs[k];
            r.snaps
                .iter()
                .filter_map(|s| s.created_at.as_deref())
                .chain(r.backups.iter().filter_map(|b| b.created_at.as_deref()))
                .filter_map(parse_cinder_time)
                .max()
                .unwrap_or(crate::time::Timestamp::UNIX_EPOCH)
        })
        .collect();
    let mut deleted = Pruned::default();
    let mut drop = std::collections::BTreeSet::new();
    for i in retention::to_delete(&settings.retention, &times) {
        for s in &runs[keys[i]].snaps {
            if !dry_run {
                cinder
                    .delete_snapshot(&s.id)
                    .with_context(|| format!("deleting snapshot {}", s.id))?;
                log::info!("retention: deleted snapshot {}", s.id);
            }
            deleted.snapshots.push(s.id.clone());
        }
        drop.extend(runs[keys[i]].backups.iter().map(|b| b.id.clone()));
    }
    let (gone, kept) = backups::prune(cinder, &ours, &drop, dry_run);
    for (id, why) in kept {
        log::info!("retention: backup {id} kept: {why}");
    }
    deleted.backups = gone;
    Ok(deleted)
}

/// What retention deleted (or, in a dry run, would).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pruned {
    pub snapshots: Vec<String>,
    pub backups: Vec<String>,
}

impl Pruned {
    pub fn all(&self) -> Vec<String> {
        self.snapshots
            .iter()
            .chain(&self.backups)
            .cloned()
            .collect()
    }
}
