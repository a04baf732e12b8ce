//! After the window: a run is good only if every snapshot was seen
//! `available` before volsnap itself thawed every mount. Only then does one
//! metadata update per snapshot replace `consistency=pending` with the final
//! label and `freeze_ms`; anything else is deleted, marked first so that
//! nobody trusts it if the deletion never happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome::Consistency;
use super::window::Window;
use crate::freeze::ThawError;
use crate::openstack::cinder::{Cinder, Target};

/// The label of a snapshot being taken, and of one a failed run left.
pub const PENDING: &str = "pending";
pub const FAILED_RUN: &str = "none-failed-run";

/// Why the window's snapshots cannot be trusted; empty when they can.
pub fn problems(window: &Window) -> Vec<String> {
    let mut problems: Vec<String> = window
        .shots
        .iter()
        .filter_map(|s| s.error.clone())
        .collect();
    for e in &window.thaw_errors {
        problems.push(match e {
            ThawError::NotFrozen(_) => format!("{e}: the snapshots may hold a thawed filesystem"),
            ThawError::Failed(..) => e.to_string(),
        });
    }
    if let Some(fired) = &window.fired {
        problems.push(format!(
            "the watchdog thawed before volsnap did ({})",
            fired.summary
        ));
    }
    if problems.is_empty() && window.shots.iter().any(|s| !s.available) {
        problems.push("a snapshot was not seen available before the thaw".into());
    }
    problems
}

/// Sets the final label and `freeze_ms` on each snapshot: the one step that
/// makes them a backup.
pub fn label(
    cinder: &Cinder,
    ids: &[String],
    consistency: Consistency,
    freeze_ms: u64,
) -> Result<()> {
    let update = BTreeMap::from([
        ("consistency".to_string(), consistency.name().to_string()),
        ("freeze_ms".to_string(), freeze_ms.to_string()),
    ]);
    let failed: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            cinder
                .update_snapshot_metadata(id, &update)
                .err()
                .map(|e| format!("cannot label snapshot {id}: {e}"))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

/// Marks snapshots `none-failed-run` and deletes them, waiting (up to
/// `wait`) for each to leave `creating` (Cinder refuses to delete one that
/// is still being made). Returns the ids still there, each with why.
pub fn discard(cinder: &Cinder, ids: &[String], wait: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + wait;
    let mark = BTreeMap::from([("consistency".to_string(), FAILED_RUN.to_string())]);
    ids.iter()
        .filter_map(|id| {
            let result = (|| -> Result<()> {
                if let Err(e) = cinder.update_snapshot_metadata(id, &mark) {
                    if e.is_not_found() {
                        return Ok(());
                    }
                    log::warn!("cannot mark snapshot {id} {FAILED_RUN}: {e}");
                }
                if cinder
                    .wait_snapshot(id, Target::Left("creating"), deadline)?
                    .is_none()
                {
                    return Ok(()); // gone already
                }
                cinder.delete_snapshot(id)?;
                cinder.wait_snapshot(
                    id,
                    Target::Gone,
                    deadline.max(Instant::now() + Duration::from_secs(60)),
                )?;
                Ok(())
            })();
            result.err().map(|e| (id.clone(), format!("{e:#}")))
        })
        .collect()
}
