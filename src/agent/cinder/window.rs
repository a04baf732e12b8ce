//! The freeze window, on one screen: tell the armed watchdog → freeze →
//! create and wait for every snapshot → thaw → disarm. Nothing in it outlives the
//! deadline: every request is bounded by the time left, and at the deadline
//! the window ends whatever the network does. What it saw is judged after.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::plan::{Plan, Volume};
use crate::freeze::{Frozen, ThawError};
use crate::hooks::HookSpec;
use crate::openstack::cinder::{Cinder, NewSnapshot, Schedule, SnapshotFilter, Until};
use crate::runtime::{self, RunLock};
use crate::watchdog::{self, Fired, Watchdog};

/// How long after the deadline the window waits for late answers (their
/// snapshots must be known to be deleted); requests end at the deadline.
const LATE: Duration = Duration::from_secs(5);

/// One volume's snapshot as the window saw it.
#[derive(Clone, Debug)]
pub struct Shot {
    pub volume: Volume,
    pub name: String,
    /// Set once Cinder accepted the POST (even if the snapshot then failed).
    pub id: Option<String>,
    /// `available` was seen before the thaw.
    pub available: bool,
    pub error: Option<String>,
    /// From the FIFREEZE: the 202, and `available` seen.
    pub accepted: Option<Duration>,
    pub seen_available: Option<Duration>,
    /// Poll rounds until `available` was seen (or the window ended); each
    /// round is one request for all the run's snapshots.
    pub polls: u32,
    /// Time spent inside those rounds' requests (the rest is sleeping).
    pub in_polls: Duration,
}

impl Shot {
    fn new(volume: Volume, name: String) -> Shot {
        Shot {
            volume,
            name,
            id: None,
            available: false,
            error: None,
            accepted: None,
            seen_available: None,
            polls: 0,
            in_polls: Duration::ZERO,
        }
    }
}

/// What happened in the window.
pub struct Window {
    pub shots: Vec<Shot>,
    /// FIFREEZE to the thaw that actually happened (volsnap's or the watchdog's).
    pub freeze_ms: u64,
    /// volsnap's own FITHAW errors; `NotFrozen` means someone thawed first.
    pub thaw_errors: Vec<ThawError>,
    /// How long the FIFREEZEs and the FITHAWs themselves took.
    pub froze_in: Duration,
    pub thawed_in: Duration,
    /// The watchdog fired before volsnap thawed.
    pub fired: Option<Fired>,
    /// Disarming failed (the watchdog is gone or mute).
    pub disarm_error: Option<String>,
}

pub fn run(
    plan: &Plan,
    cinder: &Cinder,
    mut dog: Watchdog,
    opened: Vec<(PathBuf, File)>,
    bodies: Vec<NewSnapshot>,
    stop: &'static AtomicBool,
) -> Result<Window> {
    // Made before the freeze, like the bodies: nothing inside the window
    // that could run outside it.
    let run_filter = run_filter(&bodies);
    let frozen = match dog.freezing().and_then(|()| Frozen::freeze(opened)) {
        Ok(frozen) => frozen,
        Err(e) => {
            let _ = dog.disarm();
            return Err(e);
        }
    };
    let (since, since_unix_ms) = (frozen.since, runtime::now_unix_ms());
    let froze_in = since.elapsed();
    let deadline = since + plan.max_freeze;
    let cinder = cinder.until(deadline);
    let snapshots = Snapshots::start(&cinder, plan, bodies, since);
    let mut shots = snapshots.collect_until(deadline, stop);
    if shots.len() == plan.volumes.len() && shots.iter().all(|s| s.error.is_none()) {
        wait_available(&cinder, &mut shots, &run_filter, since, deadline, stop);
    }
    let thaw_started = Instant::now();
    let thawed = frozen.thaw();
    let thawed_at = Instant::now();
    let disarmed = dog.disarm();
    let why = if stop.load(Ordering::SeqCst) {
        "interrupted by a signal before it was seen available"
    } else {
        "not seen available before the thaw"
    };
    shots.extend(snapshots.late(why));
    shots.extend(unanswered(&plan.volumes, &shots));

    let fired = disarmed.as_ref().ok().cloned().flatten();
    let freeze_ms = match &fired {
        Some(f) => f.thawed_unix_ms.saturating_sub(since_unix_ms) as u64,
        None => ms(thawed_at - since),
    };
    Ok(Window {
        shots,
        freeze_ms,
        thaw_errors: thawed.err().unwrap_or_default(),
        froze_in,
        thawed_in: thawed_at - thaw_started,
        fired,
        disarm_error: disarmed.err().map(|e| format!("{e:#}")),
    })
}

/// Armed before the hook's `freeze`: a run killed anywhere from there on
/// has its filesystems thawed and its database released by the watchdog.
pub fn watchdog_plan(
    plan: &Plan,
    lock: &RunLock,
    run: &str,
    hook_timeout: Duration,
) -> watchdog::Plan {
    watchdog::Plan {
        run: run.to_string(),
        runtime_dir: plan.runtime_dir.clone(),
        mounts: plan.mounts(),
        deadline_ms: ms(hook_timeout + plan.max_freeze + watchdog::GRACE),
        max_freeze_ms: ms(plan.max_freeze + watchdog::GRACE),
        hook: Some(HookSpec::from(&plan.runner)),
        lock_fd: Some(lock.fd()),
    }
}

/// One thread per volume, so that the POSTs go at once: each POSTs its
/// snapshot and answers with its id (or why not).
struct Snapshots {
    rx: mpsc::Receiver<Shot>,
    started: usize,
}

impl Snapshots {
    /// `bodies` are in the order of the plan's volumes.
    fn start(cinder: &Cinder, plan: &Plan, bodies: Vec<NewSnapshot>, since: Instant) -> Snapshots {
        let (tx, rx) = mpsc::channel();
        for (volume, new) in plan.volumes.iter().zip(bodies) {
            let (tx, cinder) = (tx.clone(), cinder.clone());
            let volume = volume.clone();
            std::thread::spawn(move || {
                let _ = tx.send(post_one(&cinder, volume, new, since));
            });
        }
        Snapshots {
            rx,
            started: plan.volumes.len(),
        }
    }

    /// Until every POST has its answer, one failed, a signal, or the
    /// deadline — whichever comes first.
    fn collect_until(&self, deadline: Instant, stop: &AtomicBool) -> Vec<Shot> {
        let mut shots = Vec::new();
        while shots.len() < self.started && !stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(10))) {
                Ok(shot) if shot.error.is_some() => {
                    shots.push(shot);
                    break;
                }
                Ok(shot) => shots.push(shot),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        shots
    }

    /// The POSTs answered after the window closed (bounded): their
    /// snapshots were taken too late, or not at all.
    fn late(self, why: &str) -> Vec<Shot> {
        let mut late = Vec::new();
        let until = Instant::now() + LATE;
        while let Ok(mut shot) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            shot.available = false;
            shot.error.get_or_insert_with(|| {
                format!("snapshot of volume {}: {why}", shot.volume.volume_id)
            });
            late.push(shot);
        }
        late
    }
}

/// A failed shot for each volume that has none: a run is judged on every
/// volume of its plan, never on the answers that happened to arrive.
fn unanswered(volumes: &[Volume], shots: &[Shot]) -> Vec<Shot> {
    volumes
        .iter()
        .filter(|v| !shots.iter().any(|s| s.volume.volume_id == v.volume_id))
        .map(|v| Shot {
            error: Some(format!(
                "no answer for the snapshot of volume {} (one may exist: it stays pending and the next run removes it)",
                v.volume_id
            )),
            ..Shot::new(v.clone(), String::new())
        })
        .collect()
}

/// What each volume's snapshot is created with, in the order of the plan's
/// volumes; made before the freeze.
pub fn requests(
    plan: &Plan,
    run: &str,
    metadata: &BTreeMap<String, String>,
    name_prefix: &str,
) -> Vec<NewSnapshot> {
    plan.volumes
        .iter()
        .map(|volume| {
            let mut metadata = metadata.clone();
            metadata.insert(
                "mount".into(),
                super::outcome::clip(&volume.mount.display().to_string()),
            );
            NewSnapshot {
                volume_id: volume.volume_id.clone(),
                name: super::outcome::snapshot_name(name_prefix, &plan.host, &volume.mount, run),
                description: Some(format!(
                    "volsnap backup of {} on {} (run {run})",
                    volume.mount.display(),
                    plan.host,
                )),
                metadata,
            }
        })
        .collect()
}

fn post_one(cinder: &Cinder, volume: Volume, new: NewSnapshot, since: Instant) -> Shot {
    let mut shot = Shot::new(volume, new.name.clone());
    match cinder.create_snapshot(&new) {
        Ok(created) => {
            shot.accepted = Some(since.elapsed());
            shot.id = Some(created.id);
        }
        Err(e) => {
            shot.error = Some(format!(
                "cannot snapshot volume {}: {e}",
                shot.volume.volume_id
            ))
        }
    }
    shot
}

/// What selects the run's snapshots in one list: the run's own metadata
/// key, on every one of them (see `metadata` in the agent).
fn run_filter(bodies: &[NewSnapshot]) -> SnapshotFilter {
    let mut filter = SnapshotFilter::default();
    if let Some(run) = bodies.first().and_then(|b| b.metadata.get("volsnap_run")) {
        filter.metadata.insert("volsnap_run".into(), run.clone());
    }
    filter
}

/// Every accepted snapshot polled until `available`, one request per round
/// for all of them (flat, [`Schedule::FROZEN`]); each shot records when it
/// was seen and the rounds it took. Until the deadline or a stop; a failure
/// or the deadline marks every shot not seen `available`.
fn wait_available(
    cinder: &Cinder,
    shots: &mut [Shot],
    filter: &SnapshotFilter,
    since: Instant,
    deadline: Instant,
    stop: &AtomicBool,
) {
    let ids: Vec<String> = shots.iter().filter_map(|s| s.id.clone()).collect();
    let stats = std::cell::Cell::new((0, Duration::ZERO));
    let until = Until {
        deadline,
        schedule: Schedule::FROZEN,
        stop: Some(stop),
        stats: Some(&stats),
    };
    let mut seen: Vec<(String, Duration, (u32, Duration))> = Vec::new();
    let waited = cinder.wait_snapshots_available(&ids, filter, &until, |id, round| {
        // `stats` counts a round once it is over: this one is not in yet.
        let (n, spent) = stats.get();
        seen.push((id.to_string(), since.elapsed(), (n + 1, spent + round)));
    });
    let (rounds, in_rounds) = stats.get();
    for shot in shots.iter_mut() {
        let id = shot.id.clone().unwrap_or_default();
        match seen.iter().find(|(s, ..)| *s == id) {
            Some((_, at, (n, spent))) => {
                shot.available = true;
                shot.seen_available = Some(*at);
                (shot.polls, shot.in_polls) = (*n, *spent);
            }
            None => {
                (shot.polls, shot.in_polls) = (rounds, in_rounds);
                shot.error = Some(match &waited {
                    Err(_) if Instant::now() >= deadline => format!(
                        "snapshot {id} of volume {} still creating at max_freeze ({} s)",
                        shot.volume.volume_id,
                        (deadline - since).as_secs_f64()
                    ),
                    Err(e) => format!("snapshot {id} of volume {}: {e:#}", shot.volume.volume_id),
                    Ok(()) => format!(
                        "snapshot {id} of volume {} was not seen available",
                        shot.volume.volume_id
                    ),
                });
            }
        }
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str) -> Volume {
        Volume {
            mount: PathBuf::from(format!("/srv/{id}")),
            volume_id: id.into(),
            status: "in-use".into(),
        }
    }

    #[test]
    fn a_volume_without_an_answer_fails_the_run() {
        let mut seen = Shot::new(volume("a"), "snap-a".into());
        seen.available = true;
        let missing = unanswered(&[volume("a"), volume("b")], &[seen]);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].volume.volume_id, "b");
        assert!(!missing[0].available);
        assert!(missing[0].error.as_deref().unwrap().contains("no answer"));
    }
}
