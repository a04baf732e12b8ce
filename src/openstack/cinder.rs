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
    /// A snapshot of frozen filesystems: the window lasts until `available`
    /// is seen and Cinder gets there in a few hundred ms, so polls stay fast
    /// and flat for a while (bench/RESULTS.md measured the interval).
    pub const FROZEN: Schedule = Schedule {
        first: Duration::from_millis(10),
        flat_for: Duration::from_secs(2),
        cap: Duration::from_millis(500),
    };
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
        self.paged("snapshots/detail", &query, |b: SnapshotsPage| {
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
        let mut all: Vec<T> = Vec::new();
        loop {
            let marker = all.last().map(|t| t.id().to_string());
            let mut q = query.to_vec();
            if let Some(m) = &marker {
                q.push(("marker", m));
            }
            let (items, links) = split(self.call(self.request(Method::GET, path, &q))?);
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
                    || (status == "deleting" && target != Target::Gone)
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
        if started.elapsed() >= schedule.flat_for {
            pause = (pause * POLL_GROWTH.0 / POLL_GROWTH.1).min(schedule.cap);
        }
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
