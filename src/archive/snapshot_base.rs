//! A Cinder snapshot as the base of `restore --until TIME`: the operator
//! made a volume of it and mounted it (attaching is Nova's job, not
//! volsnap's) and names it with `--snapshot ID`; this checks in Cinder that
//! it can be a base for TIME. Datastore-neutral: it returns the snapshot's
//! metadata, and the datastore's part reads its own record there
//! (PostgreSQL's `wal_lsn`, MariaDB's binlog position) and checks the
//! mounted data against it.
//!
//! Why named and not detected: nothing on the volume says which snapshot
//! it was made from (a volume's `snapshot_id` is Cinder's, and the volume
//! is attached by Nova to a server volsnap may not see), and a data
//! directory newer than the snapshot volsnap believes in would let
//! recovery stop before the data's own state.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::agent::cinder::{self, runs};
use crate::config::Settings;
use crate::time::Timestamp;

/// Cinder's `created_at` may be cut to whole seconds, and the freeze came
/// before the request it records: the image holds nothing later than this
/// after `created_at`.
const CREATED_MARGIN: Duration = Duration::from_secs(1);

/// A good snapshot of this host and datastore, taken before TIME.
#[derive(Debug, Clone)]
pub struct SnapshotBase {
    pub id: String,
    pub volume_id: String,
    /// `created_at`.
    pub created: Timestamp,
    /// The latest instant the image can hold anything of: recovery cannot
    /// stop before it.
    pub consistent_from: Timestamp,
    /// Its Cinder metadata: volsnap's labels and the hook's values.
    pub metadata: BTreeMap<String, String>,
}

/// Snapshot `id`, checked as a base for `until`: available and good
/// (`consistency` final, `freeze_ms`), made by volsnap on this host (the
/// archived log is this host's) for this config's datastore, holding the
/// hook values in `required` (the datastore's position in its log), and
/// taken before `until`. Every refusal names the snapshot and why.
pub fn verify(
    settings: &Settings,
    id: &str,
    until: Timestamp,
    required: &[&str],
) -> Result<SnapshotBase> {
    let cinder = cinder::connect(settings)?;
    let snap = match cinder.snapshot(id) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => bail!("--snapshot {id}: no such snapshot in Cinder"),
        Err(e) => return Err(anyhow!(e)).context(format!("looking up snapshot {id}")),
    };
    let meta = &snap.metadata;
    let label = |k: &str| meta.get(k).map_or("none", String::as_str);
    if meta.get("created_by").map(String::as_str) != Some("volsnap") {
        bail!("snapshot {id} was not made by volsnap (created_by {:?}): nothing says it is consistent", label("created_by"));
    }
    let state = runs::state(&snap);
    if state != runs::State::Good {
        bail!(
            "snapshot {id} is not a good backup ({}: status {}, consistency {:?}, freeze_ms {}): \
             it cannot be a base",
            state.name(),
            snap.status,
            label("consistency"),
            label("freeze_ms")
        );
    }
    let host = cinder::hostname();
    if meta.get("host") != Some(&host) {
        bail!(
            "snapshot {id} is of host {:?}; the archived log this restore replays is this host's ({host:?})",
            label("host")
        );
    }
    let datastore = settings.datastore.name();
    if meta.get("datastore").map(String::as_str) != Some(datastore) {
        bail!(
            "snapshot {id} is of datastore {:?}, this config's is {datastore}",
            label("datastore")
        );
    }
    for key in required {
        if meta.get(*key).map_or(true, |v| v.is_empty()) {
            bail!(
                "snapshot {id} records no {key} (consistency {:?}: the {datastore} hook did not \
                 say where its log stood), so the log to replay cannot be checked against it",
                label("consistency")
            );
        }
    }
    let created = snap
        .created_at
        .as_deref()
        .and_then(runs::parse_cinder_time)
        .ok_or_else(|| anyhow!("snapshot {id}: Cinder gives no creation time"))?;
    let consistent_from = created.checked_add(CREATED_MARGIN).unwrap_or(created);
    if consistent_from > until {
        bail!(
            "snapshot {id} was taken at {created}, not before {until}: recovery cannot stop before \
             the snapshot's own state; choose a time after {consistent_from}, or a volume of an older snapshot{}",
            older(settings, until)
        );
    }
    Ok(SnapshotBase {
        id: snap.id.clone(),
        volume_id: snap.volume_id.clone(),
        created,
        consistent_from,
        metadata: snap.metadata.clone(),
    })
}

/// For a refusal: this host's good snapshots of the datastore that could be
/// a base for `until`, newest first (empty when Cinder cannot tell).
pub fn older(settings: &Settings, until: Timestamp) -> String {
    let Ok(cinder) = cinder::connect(settings) else {
        return String::new();
    };
    let Ok(snaps) = runs::list(&cinder) else {
        return String::new();
    };
    let fit: Vec<String> = snaps
        .iter()
        .filter(|s| runs::state(s) == runs::State::Good)
        .filter(|s| {
            s.metadata.get("datastore").map(String::as_str) == Some(settings.datastore.name())
        })
        .filter_map(|s| {
            let created = runs::parse_cinder_time(s.created_at.as_deref()?)?;
            (created.checked_add(CREATED_MARGIN)? <= until).then(|| format!("{} ({created})", s.id))
        })
        .take(3)
        .collect();
    if fit.is_empty() {
        " (this host has no good snapshot before it)".into()
    } else {
        format!(" (this host's newest before it: {})", fit.join(", "))
    }
}
