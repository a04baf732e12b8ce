//! Cinder (Block Storage API v3): volumes, snapshots, volumes from snapshots,
//! and waits for a status with a deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Session;
use super::http::{self, Error, Request};

/// The microversion of every request, chosen on purpose:
/// - at least 3.22, because below it Cinder *silently drops* the `metadata`
///   filter of a snapshot list and returns every snapshot — a retention pass
///   that selects volsnap's own snapshots by metadata must never see others;
/// - at least 3.31, because from there a filter the cloud does not allow is a
///   400 naming it instead of being dropped without a word (same reason);
/// - below 3.66, where `force` on a snapshot of an in-use volume stops being
///   needed: volsnap always sends `force: true`, which is required below 3.66
///   and accepted (ignored) from 3.66 on, so one body works everywhere;
/// - as low as that allows, because a cloud whose maximum is lower answers
///   406; 3.31 is in every Cinder since Pike (2017). The test cloud's
///   maximum is 3.71.
pub const MICROVERSION: &str = "volume 3.31";

/// How often a wait polls: `first` between polls for `flat_for`, then each
/// pause ×3/2 up to `cap`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub first: Duration,
    pub flat_for: Duration,
    pub cap: Duration,
}

impl Schedule {
    /// Waits outside the freeze window (a new volume, a deletion).
    pub const PATIENT: Schedule = Schedule {
        first: Duration::from_millis(25),
        flat_for: Duration::ZERO,
        cap: Duration::from_secs(1),
    };
    /// Snapshots of frozen filesystems: the window lasts until the last
    /// `available` is seen, so every pause is time frozen. Flat for the whole
    /// window (max_freeze bounds it): one request per round whatever the
    /// number of volumes ([`Cinder::wait_snapshots_available`]), and with
    /// many volumes Cinder takes seconds, where a backed-off pause would add
    /// up to its cap (bench/RESULTS.md measured the interval).
    pub const FROZEN: Schedule = Schedule {
        first: Duration::from_millis(10),
        flat_for: Duration::MAX,
        cap: Duration::from_millis(10),
    };
}

impl Schedule {
    /// The pause after `pause`, `elapsed` into the wait.
    pub fn next(&self, pause: Duration, elapsed: Duration) -> Duration {
        if elapsed >= self.flat_for {
            (pause * POLL_GROWTH.0 / POLL_GROWTH.1).min(self.cap)
        } else {
            pause
        }
    }
}

/// Each pause is this much longer than the one before (×3/2), up to the cap.
const POLL_GROWTH: (u32, u32) = (3, 2);
/// Transient errors (no answer, 5xx) in a row that a wait tolerates.
pub const POLL_TRANSIENT_BUDGET: u32 = 5;
/// The shortest timeout a poll gets, even right before the deadline.
pub const POLL_MIN_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(default)]
    pub server_id: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub host_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: String,
    pub volume_id: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub progress: Option<String>,
}

/// What `POST /snapshots` gets; `force` is always sent (see [`MICROVERSION`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct NewSnapshot {
    pub volume_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NewVolume {
    pub size: u64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Filters for a snapshot list; every snapshot must match all that are set.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    pub volume_id: Option<String>,
    pub status: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// What a wait waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    Status(&'a str),
    /// Any status but this one (an `error` status included), or deleted:
    /// what a clean-up waits for before it deletes (`creating` cannot be).
    Left(&'a str),
    /// Deleted: the resource answers 404.
    Gone,
}

#[derive(Clone, Debug)]
pub struct Cinder {
    session: Session,
    endpoint: Url,
    /// Set by [`Cinder::until`]: every request is bounded by it.
    deadline: Option<Instant>,
}

impl Cinder {
    /// `endpoint` is the block-storage URL, e.g. `http://host:8776/v3/PROJECT_ID`.
    pub fn new(session: Session, endpoint: Url) -> Cinder {
        Cinder {
            session,
            endpoint,
            deadline: None,
        }
    }

    /// The same client, with every request (and its retries) bounded by
    /// `deadline`: what is asked while filesystems are frozen must not
    /// outlive the window, whatever the network does.
    pub fn until(&self, deadline: Instant) -> Cinder {
        Cinder {
            deadline: Some(deadline),
            ..self.clone()
        }
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let base = self.endpoint.as_str().trim_end_matches('/');
        // Paths are fixed words and ids, each id percent-encoded by `seg`.
        let mut url = Url::parse(&format!("{base}/{path}")).expect("Cinder URL");
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(&self, method: Method, path: &str, query: &[(&str, &str)]) -> Request {
        self.request_at(method, path, query, MICROVERSION)
    }

    /// A request at another microversion (the backups API: see
    /// `cinder_backups`).
    pub(super) fn request_at(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        microversion: &str,
    ) -> Request {
        Request::new(method, self.url(path, query))
            .header("openstack-api-version", microversion)
            .expect("a valid static header")
            .deadline(self.deadline)
    }

    pub(super) fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, Error> {
        let resp = self.session.send(&req)?;
        http::read_json(&req, resp)
    }

    pub fn volume(&self, id: &str) -> Result<Volume, Error> {
        let req = self.request(Method::GET, &format!("volumes/{}", seg(id)), &[]);
        Ok(self.call::<VolumeBody>(req)?.volume)
    }

    /// Every volume of the project, with details (attachments).
    pub fn volumes(&self) -> Result<Vec<Volume>, Error> {
        self.paged("volumes/detail", &[], |b: VolumesPage| {
            (b.volumes, b.volumes_links)
        })
    }

    pub fn create_volume(&self, new: &NewVolume) -> Result<Volume, Error> {
        let req = self
            .request(Method::POST, "volumes", &[])
            .json(&serde_json::json!({ "volume": new }));
        Ok(self.call::<VolumeBody>(req)?.volume)
    }

    pub fn delete_volume(&self, id: &str) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &format!("volumes/{}", seg(id)), &[]);
        self.session.send(&req).map(drop)
    }

    /// A new volume from a snapshot (its size by default), `available` before
    /// the deadline.
    pub fn volume_from_snapshot(
        &self,
        snapshot: &Snapshot,
        name: &str,
        deadline: Instant,
    ) -> anyhow::Result<Volume> {
        let volume = self
            .create_volume(&NewVolume {
                size: snapshot.size,
                name: name.to_string(),
                snapshot_id: Some(snapshot.id.clone()),
                ..NewVolume::default()
            })
            .with_context(|| format!("cannot create a volume from snapshot {}", snapshot.id))?;
        self.wait_volume(&volume.id, Target::Status("available"), deadline)?
            .context("volume vanished")
    }

    /// Creates a snapshot (`force: true`, see [`MICROVERSION`]); it starts
    /// `creating`: wait for `available` before trusting it.
    pub fn create_snapshot(&self, new: &NewSnapshot) -> Result<Snapshot, Error> {
        let mut body = serde_json::to_value(new).expect("snapshot body");
        body["force"] = serde_json::Value::Bool(true);
        let req = self
            .request(Method::POST, "snapshots", &[])
            .json(&serde_json::json!({ "snapshot": body }));
        Ok(self.call::<SnapshotBody>(req)?.snapshot)
    }

    pub fn snapshot(&self, id: &str) -> Result<Snapshot, Error> {
        let req = self.request(Method::GET, &format!("snapshots/{}", seg(id)), &[]);
        Ok(self.call::<SnapshotBody>(req)?.snapshot)
    }

    /// Snapshots with details, filtered on the server.
    pub fn snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<Snapshot>, Error> {
        self.snapshots_with(filter, |req| req)
    }

    /// [`Cinder::snapshots`], each page's request adjusted by `adjust`.
    fn snapshots_with(
        &self,
        filter: &SnapshotFilter,
        adjust: impl Fn(Request) -> Request,
    ) -> Result<Vec<Snapshot>, Error> {
        let metadata;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(v) = &filter.volume_id {
            query.push(("volume_id", v));
        }
        if let Some(s) = &filter.status {
            query.push(("status", s));
        }
        if !filter.metadata.is_empty() {
            // Cinder reads it as a Python dict literal; JSON of strings is one.
            metadata = serde_json::to_string(&filter.metadata).expect("metadata");
            query.push(("metadata", &metadata));
        }
        self.paged_with("snapshots/detail", &query, adjust, |b: SnapshotsPage| {
            (b.snapshots, b.snapshots_links)
        })
    }

    /// Adds or replaces metadata keys of a snapshot (others stay).
    pub fn update_snapshot_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let req = self
            .request(
                Method::POST,
                &format!("snapshots/{}/metadata", seg(id)),
                &[],
            )
            .json(&serde_json::json!({ "metadata": metadata }))
            // Setting the same keys again changes nothing: safe to retry.
            .idempotent(true);
        self.session.send(&req).map(drop)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<(), Error> {
        let req = self.request(Method::DELETE, &format!("snapshots/{}", seg(id)), &[]);
        self.session.send(&req).map(drop)
    }

    /// Follows `*_links` `next` pages by marker, keeping the filters.
    fn paged<B: DeserializeOwned, T: HasId>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        split: impl Fn(B) -> (Vec<T>, Vec<Link>),
    ) -> Result<Vec<T>, Error> {
        self.paged_with(path, query, |req| req, split)
    }

    fn paged_with<B: DeserializeOwned, T: HasId>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        adjust: impl Fn(Request) -> Request,
        split: impl Fn(B) -> (Vec<T>, Vec<Link>),
    ) -> Result<Vec<T>, Error> {
        let mut all: Vec<T> = Vec::new();
        loop {
            let marker = all.last().map(|t| t.id().to_string());
            let mut q = query.to_vec();
            if let Some(m) = &marker {
                q.push(("marker", m));
            }
            let req = adjust(self.request(Method::GET, path, &q));
            let (items, links) = split(self.call(req)?);
            let more = links.iter().any(|l| l.rel == "next") && !items.is_empty();
            all.extend(items);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Polls a snapshot until it reaches `target`, fails (`error`), or the
    /// deadline passes. `Ok(None)` when it was deleted ([`Target::Gone`],
    /// [`Target::Left`]).
    pub fn wait_snapshot(
        &self,
        id: &str,
        target: Target,
        deadline: Instant,
    ) -> anyhow::Result<Option<Snapshot>> {
        self.wait_snapshot_until(
            id,
            target,
            &Until {
                deadline,
                schedule: Schedule::PATIENT,
                stop: None,
                stats: None,
            },
        )
    }

    /// [`Cinder::wait_snapshot`] as `until` says: a schedule, a stop flag,
    /// statistics.
    pub fn wait_snapshot_until(
        &self,
        id: &str,
        target: Target,
        until: &Until,
    ) -> anyhow::Result<Option<Snapshot>> {
        let path = format!("snapshots/{}", seg(id));
        wait(&format!("snapshot {id}"), target, until, |timeout| {
            let req = self
                .request(Method::GET, &path, &[])
                .timeout(timeout.min(self.session.http().request_timeout()))
                .no_retry();
            let s = self.call::<SnapshotBody>(req)?.snapshot;
            let status = s.status.clone();
            Ok((s, status))
        })
    }

    /// Polls the snapshots `ids` until every one is `available`, one fails,
    /// or the deadline passes, with ONE request per round whatever their
    /// number: the snapshot itself while one is left, else the list of
    /// `filter` (which must select them all, e.g. by the run's metadata);
    /// one missing from the list is asked for by id (a 404 ends the wait).
    /// `seen` is called once per snapshot, when it is first seen
    /// `available`, with the time the requests of that round took. N pollers would put N requests per round on Cinder's
    /// API while it is making the snapshots (bench/RESULTS.md).
    pub fn wait_snapshots_available(
        &self,
        ids: &[String],
        filter: &SnapshotFilter,
        until: &Until,
        mut seen: impl FnMut(&str, Duration),
    ) -> anyhow::Result<()> {
        let mut left: Vec<&str> = ids.iter().map(String::as_str).collect();
        let what = match ids {
            [one] => format!("snapshot {one}"),
            _ => format!("snapshots {}", ids.join(", ")),
        };
        let get = |id: &str, timeout: Duration| {
            let req = self
                .request(Method::GET, &format!("snapshots/{}", seg(id)), &[])
                .timeout(timeout)
                .no_retry();
            self.call::<SnapshotBody>(req).map(|b| b.snapshot)
        };
        let waited = wait(&what, Target::Status("available"), until, |timeout| {
            let round = Instant::now();
            let timeout = timeout.min(self.session.http().request_timeout());
            let got = match left.as_slice() {
                [] => Vec::new(),
                [one] => vec![get(one, timeout)?],
                _ => self.snapshots_with(filter, |req| req.timeout(timeout).no_retry())?,
            };
            let mut statuses: Vec<(&str, String)> = Vec::new();
            for id in &left {
                let status = match got.iter().find(|s| s.id == *id) {
                    Some(s) => s.status.clone(),
                    None => get(id, timeout)?.status,
                };
                statuses.push((id, status));
            }
            for (id, status) in &statuses {
                if status == "available" {
                    seen(id, round.elapsed());
                }
            }
            left.retain(|id| !statuses.iter().any(|(i, s)| i == id && s == "available"));
            // The round's status: the first failure (naming its snapshot when
            // there are several), else the first still on its way, else
            // `available` (the target).
            let failed = statuses
                .iter()
                .find(|(_, s)| s.starts_with("error") || s == "deleting");
            let status = match (failed, statuses.iter().find(|(_, s)| s != "available")) {
                (Some((_, s)), _) if ids.len() == 1 => s.clone(),
                (Some((id, s)), _) => format!("{s} (snapshot {id})"),
                (None, Some((_, s))) => s.clone(),
                (None, None) => "available".to_string(),
            };
            Ok(((), status))
        });
        waited.map(drop)
    }

    pub fn wait_volume(
        &self,
        id: &str,
        target: Target,
        deadline: Instant,
    ) -> anyhow::Result<Option<Volume>> {
        let path = format!("volumes/{}", seg(id));
        let until = Until {
            deadline,
            schedule: Schedule::PATIENT,
            stop: None,
            stats: None,
        };
        wait(&format!("volume {id}"), target, &until, |timeout| {
            let req = self
                .request(Method::GET, &path, &[])
                .timeout(timeout.min(self.session.http().request_timeout()))
                .no_retry();
            let v = self.call::<VolumeBody>(req)?.volume;
            let status = v.status.clone();
            Ok((v, status))
        })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
}

/// When a wait ends without its target.
pub struct Until<'a> {
    pub deadline: Instant,
    pub schedule: Schedule,
    /// Set by a signal: stop waiting at once.
    pub stop: Option<&'a AtomicBool>,
    /// Filled in as it goes: polls made and the time spent inside them
    /// (where the freeze window's time goes, for `-v`).
    pub stats: Option<&'a std::cell::Cell<(u32, Duration)>>,
}

/// The one poll loop: on a schedule, tolerating a few transient errors in a
/// row, until `target`, the deadline or a stop. `poll` gets the time left
/// (at least [`POLL_MIN_TIMEOUT`]) to bound its request. A status starting
/// with `error` ends the wait with an error; so does `deleting` unless the
/// target is [`Target::Gone`].
pub fn wait<T>(
    what: &str,
    target: Target,
    until: &Until,
    mut poll: impl FnMut(Duration) -> Result<(T, String), Error>,
) -> anyhow::Result<Option<T>> {
    let deadline = until.deadline;
    let schedule = until.schedule;
    let started = Instant::now();
    let mut pause = schedule.first;
    let mut transient = 0;
    let mut last = String::from("unknown");
    let mut polls = 0u32;
    loop {
        if until.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            bail!("interrupted by a signal while waiting for {what}");
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        polls += 1;
        let poll_started = Instant::now();
        let polled = poll(remaining.max(POLL_MIN_TIMEOUT));
        if let Some(stats) = until.stats {
            let (n, spent) = stats.get();
            stats.set((n + 1, spent + poll_started.elapsed()));
        }
        match polled {
            Ok((item, status)) => {
                transient = 0;
                let reached = match target {
                    Target::Status(want) => status == want,
                    Target::Left(from) => status != from,
                    Target::Gone => false,
                };
                if reached {
                    log::debug!(
                        "{what} is {status} after {} ms ({polls} polls)",
                        started.elapsed().as_millis()
                    );
                    return Ok(Some(item));
                }
                if matches!(target, Target::Left(_)) {
                    // Still the status it is to leave: poll on.
                } else if status.starts_with("error")
                    || (status.starts_with("deleting") && target != Target::Gone)
                {
                    bail!(
                        "{what} went to status {status:?} while waiting for {}",
                        describe(target)
                    );
                }
                if status != last {
                    log::debug!("{what}: {status}");
                }
                last = status;
            }
            Err(e) if e.is_not_found() && matches!(target, Target::Gone | Target::Left(_)) => {
                log::debug!("{what} is gone after {} ms", started.elapsed().as_millis());
                return Ok(None);
            }
            Err(e) if e.is_transient() && transient < POLL_TRANSIENT_BUDGET => {
                transient += 1;
                log::warn!(
                    "{e}; still waiting for {what} (transient error {transient}/{POLL_TRANSIENT_BUDGET})"
                );
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "while waiting for {what} to be {}",
                    describe(target)
                )))
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "{what} is still {last:?} after {:.1}s, not {}: deadline reached",
                started.elapsed().as_secs_f64(),
                describe(target)
            );
        }
        std::thread::sleep(pause.min(remaining));
        pause = schedule.next(pause, started.elapsed());
    }
}

fn describe(target: Target) -> String {
    match target {
        Target::Status(s) => format!("{s:?}"),
        Target::Left(s) => format!("out of {s:?}"),
        Target::Gone => "deleted".to_string(),
    }
}

/// One path segment, percent-encoded.
pub(super) fn seg(id: &str) -> String {
    super::swift::encode_segment(id)
}

trait HasId {
    fn id(&self) -> &str;
}

impl HasId for Volume {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for Snapshot {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Deserialize)]
struct VolumeBody {
    volume: Volume,
}

#[derive(Debug, Deserialize)]
struct SnapshotBody {
    snapshot: Snapshot,
}

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(default)]
    rel: String,
}

#[derive(Debug, Deserialize)]
struct VolumesPage {
    volumes: Vec<Volume>,
    #[serde(default)]
    volumes_links: Vec<Link>,
}

#[derive(Debug, Deserialize)]
struct SnapshotsPage {
    snapshots: Vec<Snapshot>,
    #[serde(default)]
    snapshots_links: Vec<Link>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pauses of `schedule` over a wait of `secs` (requests taking no time).
    fn pauses(schedule: Schedule, secs: u64) -> Vec<Duration> {
        let (mut pause, mut elapsed, mut out) = (schedule.first, Duration::ZERO, Vec::new());
        while elapsed < Duration::from_secs(secs) {
            out.push(pause);
            elapsed += pause;
            pause = schedule.next(pause, elapsed);
        }
        out
    }

    #[test]
    fn the_frozen_schedule_stays_flat_for_the_whole_window() {
        // Eight volumes on a loaded cloud take seconds; the window's
        // deadline (max_freeze, up to minutes) is what bounds the polling.
        let frozen = pauses(Schedule::FROZEN, 120);
        assert!(frozen.len() >= 11_000, "{} polls", frozen.len());
        assert!(frozen.iter().all(|p| *p == Duration::from_millis(10)));
    }

    #[test]
    fn the_patient_schedule_backs_off_to_its_cap() {
        let patient = pauses(Schedule::PATIENT, 30);
        assert_eq!(patient[0], Duration::from_millis(25));
        assert!(patient.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*patient.last().unwrap(), Duration::from_secs(1));
    }
}
