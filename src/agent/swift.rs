//! The Swift strategy, the one place that knows the order of its steps:
//!
//! backup: lock → checks, authentication, containers → remove the segments
//! of earlier runs that were killed ([`orphans`]) → this run's name, recorded
//! in the runtime dir → hook `backup` → compress → encrypt → segments PUT in
//! parallel → hook exit status → SLO manifest with the metadata → HEAD to
//! verify → retention. Any failure volsnap lives through deletes what this
//! run uploaded: no half backup ever looks complete; after a SIGKILL the
//! next run's sweep does it.
//!
//! restore: HEAD (metadata) → GET of each segment ([`Download`]) → decrypt
//! → decompress → SHA-256 → hook
//! `restore`, which swaps the data in only once volsnap closes its stdin,
//! which it does only after the SHA-256 and size matched.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::config::{Compression, Settings};
use crate::exit;
use crate::hooks::{self, Hook};
use crate::openstack::swift::{Limits, Metadata, SloSegment, Swift};
use crate::retention;
use crate::runtime::{self, RunLock};
use crate::stream::{
    self, segments_container, BackupMeta, BackupName, BackupPlan, ManifestEntry, Progress, Segment,
    Tree, META_PREFIX,
};

pub(crate) mod catalog;
mod orphans;

use catalog::{backups, identities, own_backups, read_meta};
pub use catalog::{connect, Listed};
use orphans::InFlight;
pub use orphans::{Orphan, State as OrphanState, Sweep};

/// Where the `backup` action leaves its `key=value` lines (stdout is data).
const BACKUP_META_FILE: &str = "backup.meta";

/// After a failed run, how long a hook that is ending anyway (it closed its
/// stdout, or stopped reading its stdin) may take to exit with its own
/// reason, before it is killed.
const HOOK_EXIT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub strategy: &'static str,
    pub dry_run: bool,
    pub container: String,
    pub segments_container: String,
    pub name: String,
    pub datastore: String,
    pub datastore_version: Option<String>,
    pub compression: String,
    pub encryption: Vec<String>,
    pub size: u64,
    pub stored_size: u64,
    pub segments: usize,
    pub sha256: String,
    pub bytes_per_sec: f64,
    pub total_ms: u64,
    pub metadata: BTreeMap<String, String>,
    pub pruned: Vec<String>,
    /// Segments of earlier runs that were killed, found before this one.
    pub orphans: Sweep,
    /// A dry run's: the pid of a run holding the lock now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_holder_pid: Option<u32>,
}

pub fn backup(
    settings: &Settings,
    dry_run: bool,
    quiet: bool,
    stop: &AtomicBool,
) -> Result<BackupReport> {
    let started = Instant::now();
    // A dry run takes no lock; it reports whether a run holds it.
    let _lock = match dry_run {
        true => None,
        false => Some(RunLock::acquire(&settings.runtime_dir)?),
    };
    hooks::check_configured(settings).map_err(anyhow::Error::msg)?;
    let mut plan = BackupPlan::from_settings(&settings.swift)?;
    let s = &settings.swift;
    let seg_container = segments_container(&s.container)?;
    let host = crate::agent::cinder::hostname();
    let swift = connect(settings)?;
    for container in [&s.container, &seg_container] {
        // A dry run creates nothing; a missing container it would create is
        // not a failure.
        match swift.ensure_container(container, s.create_container && !dry_run) {
            Ok(_) => {}
            Err(e) if dry_run && s.create_container && e.is_not_found() => {
                log::info!("dry run: would create Swift container {container}");
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "Swift container {container} (create_container = {})",
                    s.create_container
                )))
            }
        }
    }
    if !dry_run {
        fit_to_limits(&swift, settings, &mut plan)?;
    }
    // Before this run's own record replaces the previous run's. A failed
    // sweep costs storage, not the backup.
    let orphans = orphans::sweep(settings, &swift, !dry_run).unwrap_or_else(|e| {
        log::warn!("looking for orphan segments failed: {e:#}");
        Sweep::default()
    });
    let name = fresh_name(&swift, &s.prefix, &host, &s.container, &seg_container)?;
    let mut report = BackupReport {
        strategy: "swift",
        dry_run,
        container: s.container.clone(),
        segments_container: seg_container.clone(),
        name: name.manifest(),
        datastore: settings.datastore.name().to_string(),
        datastore_version: None,
        compression: stream::compression_name(plan.compression).to_string(),
        encryption: plan
            .recipients
            .as_ref()
            .map(|r| r.labels().to_vec())
            .unwrap_or_default(),
        size: 0,
        stored_size: 0,
        segments: 0,
        sha256: String::new(),
        bytes_per_sec: 0.0,
        total_ms: 0,
        metadata: BTreeMap::new(),
        pruned: Vec::new(),
        orphans,
        lock_holder_pid: dry_run
            .then(|| runtime::lock_holder(&settings.runtime_dir))
            .flatten(),
    };
    if dry_run {
        return Ok(report);
    }
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }

    runtime::ensure_dir(&settings.runtime_dir)?;
    let in_flight = InFlight::begin(&settings.runtime_dir, &name.manifest())?;
    let meta_file = settings.runtime_dir.join(BACKUP_META_FILE);
    let _ = std::fs::remove_file(&meta_file);
    let hook = Hook::new(settings, settings.hooks.timeout);
    let (running, stdout) = hook.spawn_backup(settings.hooks.stream_timeout)?;
    let ended = AtomicBool::new(false);
    let source = Interruptible {
        inner: stdout,
        stop,
        ended: &ended,
    };
    let upload = |segment: &Segment| -> Result<String> {
        let object = name.segment(segment.index);
        segment
            .send(
                |body| Ok(swift.put_object_streamed(&seg_container, &object, body)?),
                |whole| Ok(swift.put_object_for_etag(&seg_container, &object, whole)?),
            )
            .with_context(|| format!("uploading segment {} ({object})", segment.index))
    };
    let mut progress = Progress::new("backup", quiet);
    let streamed = stream::backup(source, &plan, upload, &mut progress);
    let hook_result = match &streamed {
        Ok(_) => running.finish(),
        // The hook closed its stdout: it is ending, and how it ended is
        // likely why the stream failed (a hook that wrote nothing).
        Err(_) if ended.load(Ordering::SeqCst) => {
            running.exit_or_kill(HOOK_EXIT_GRACE).unwrap_or(Ok(()))
        }
        Err(_) => {
            running.kill();
            Ok(())
        }
    };
    let summary = match (streamed, hook_result) {
        (Ok(summary), Ok(())) => summary,
        (Ok(summary), Err(e)) => {
            let names: Vec<String> = summary
                .segments
                .iter()
                .map(|s| name.segment(s.index))
                .collect();
            return Err(cleanup(
                &swift,
                &seg_container,
                &names,
                in_flight,
                e.context("the backup stream is incomplete"),
            ));
        }
        (Err(failure), hook_result) => {
            let names: Vec<String> = failure
                .uploaded
                .iter()
                .map(|s| name.segment(s.index))
                .collect();
            let error = match hook_result {
                Ok(()) => failure.error,
                Err(hook) => hook.context(format!("{:#}", failure.error)),
            };
            return Err(cleanup(&swift, &seg_container, &names, in_flight, error));
        }
    };
    let hook_values = read_meta_file(&meta_file);
    let meta = BackupMeta::new(settings.datastore.name(), &hook_values, &plan, &summary);
    let metadata: Metadata = meta
        .to_headers()
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(META_PREFIX).unwrap_or(&k).to_string(), v))
        .collect();
    let tree = Tree::new(&name, &summary.segments, plan.max_segments);
    let objects: Vec<String> = tree.objects().map(str::to_string).collect();
    let slo = |entries: &[ManifestEntry]| -> Vec<SloSegment> {
        entries
            .iter()
            .map(|e| SloSegment {
                path: format!("/{seg_container}/{}", e.object),
                etag: e.etag.clone(),
                size_bytes: e.size,
            })
            .collect()
    };
    let content_type = content_type(plan.compression, plan.recipients.is_some());
    // The sub-manifests first (lowest level first: Swift checks each entry
    // against what it finds), the backup's own manifest last.
    for sub in &tree.subs {
        if let Err(e) = swift.put_slo(
            &seg_container,
            &sub.object,
            &slo(&sub.entries),
            &Metadata::new(),
            content_type,
        ) {
            return Err(cleanup(
                &swift,
                &seg_container,
                &objects,
                in_flight,
                anyhow!(e).context(format!("writing the sub-manifest {}", sub.object)),
            ));
        }
    }
    if let Err(e) = swift.put_slo(
        &s.container,
        &name.manifest(),
        &slo(&tree.top),
        &metadata,
        content_type,
    ) {
        return Err(cleanup(
            &swift,
            &seg_container,
            &objects,
            in_flight,
            anyhow!(e).context("writing the SLO manifest"),
        ));
    }
    // Trust, then verify: the manifest Swift serves must be the one written.
    let verified = swift.head_object(&s.container, &name.manifest()).map_err(anyhow::Error::from).and_then(|info| {
        let expected_etag = tree.etag();
        if !info.static_large_object || info.size != summary.stored_bytes || info.etag != expected_etag {
            bail!(
                "Swift serves {} bytes (etag {}, SLO {}), volsnap uploaded {} bytes (etag {expected_etag})",
                info.size,
                info.etag,
                info.static_large_object,
                summary.stored_bytes
            );
        }
        Ok(())
    });
    if let Err(e) = verified {
        if swift.delete_tree(&s.container, &name.manifest()).is_ok() {
            in_flight.end();
        }
        return Err(e.context("the stored backup does not match what was uploaded; deleted it"));
    }
    in_flight.end();
    log::info!(
        "backup {}/{}: {} plain bytes, {} stored, {} segments",
        s.container,
        name.manifest(),
        summary.plain_bytes,
        summary.stored_bytes,
        summary.segments.len()
    );

    report.datastore_version = meta.datastore_version.clone();
    report.size = summary.plain_bytes;
    report.stored_size = summary.stored_bytes;
    report.segments = summary.segments.len();
    report.sha256 = summary.sha256.clone();
    report.bytes_per_sec = summary.progress.bytes_per_sec;
    report.metadata = metadata;
    if settings.retention.is_set() && settings.retention.after_backup {
        match prune_with(settings, &swift, false) {
            Ok(pruned) => report.pruned = pruned,
            Err(e) => log::warn!("backup done, but retention failed: {e:#}"),
        }
    }
    report.total_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The hook's stdout, failing once a signal asked volsnap to stop: the
/// pipeline then stops and the uploaded segments are deleted. `ended` is set
/// at the end of the stream.
struct Interruptible<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
    ended: &'a AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Interruptible<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("interrupted by a signal"));
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.ended.store(true, Ordering::SeqCst);
        }
        Ok(n)
    }
}

/// This run's backup name: the current second, or a later one when a
/// manifest or segments already carry that name. Names have a resolution of a
/// second and the run lock only keeps runs from overlapping: two short runs
/// in one second would otherwise share a name, and the second would
/// overwrite the first one's segments — or, failing, delete them.
fn fresh_name(
    swift: &Swift,
    prefix: &str,
    host: &str,
    container: &str,
    seg_container: &str,
) -> Result<BackupName> {
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let name = BackupName::new(prefix, host, crate::time::Timestamp::now())?;
        let manifest_taken = match swift.head_object(container, &name.manifest()) {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(anyhow!(e).context("checking that the backup name is free")),
        };
        let segments_taken = !manifest_taken
            && !swift
                .list_objects(seg_container, &name.segment_prefix())
                .map_err(|e| anyhow!(e).context("checking that the backup name is free"))?
                .is_empty();
        if !manifest_taken && !segments_taken {
            return Ok(name);
        }
        log::debug!("{} is taken; waiting for the next second", name.manifest());
        let next = (name.created.as_second() + 1) * 1000;
        let now = crate::time::Timestamp::now().as_millisecond();
        std::thread::sleep(Duration::from_millis((next - now).clamp(1, 1000) as u64));
    }
    bail!(
        "no free backup name in {ATTEMPTS} seconds: {container} holds backups named in the future?"
    )
}

/// Deletes the segments a failed run uploaded; returns the run's error,
/// saying what was cleaned up or what is left. What is left stays recorded
/// as this run's, for the next sweep.
fn cleanup(
    swift: &Swift,
    container: &str,
    objects: &[String],
    in_flight: InFlight,
    error: anyhow::Error,
) -> anyhow::Error {
    let mut left = Vec::new();
    for object in objects {
        match swift.delete_object(container, object) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                log::error!("{e}");
                left.push(object.clone());
            }
        }
    }
    if left.is_empty() {
        in_flight.end();
        error.context(format!(
            "backup failed; deleted the {} segment(s) it had uploaded, no manifest was written",
            objects.len()
        ))
    } else {
        error.context(format!("backup failed; no manifest was written, but these segments could not be deleted from {container}: {}", left.join(", ")))
    }
}

/// What the joined object is, for whoever downloads it: age's output has no
/// registered type of its own.
fn content_type(compression: Compression, encrypted: bool) -> &'static str {
    match (encrypted, compression) {
        (true, _) | (false, Compression::None) => "application/octet-stream",
        (false, Compression::Zstd) => "application/zstd",
        (false, Compression::Gzip) => "application/gzip",
    }
}

/// Fits the plan to what the cluster allows (`GET /info`, or Swift's
/// defaults when it hides it; `swift.max_manifest_segments` lowers the
/// entries per manifest): before the hook runs, so a segment size the
/// cluster refuses fails with nothing uploaded.
fn fit_to_limits(swift: &Swift, settings: &Settings, plan: &mut BackupPlan) -> Result<()> {
    let limits = swift.limits().unwrap_or_else(|e| {
        log::info!("Swift's /info: {e}; assuming Swift's default limits");
        Limits::default()
    });
    plan.max_segments = match settings.swift.max_manifest_segments {
        Some(n) => n.min(limits.max_manifest_segments),
        None => limits.max_manifest_segments,
    }
    .max(2);
    if plan.segment_size as u64 > limits.max_file_size {
        bail!(
            "swift.segment_size ({} bytes) is larger than this Swift's largest object \
             (max_file_size {} bytes in its /info)",
            plan.segment_size,
            limits.max_file_size
        );
    }
    log::debug!(
        "Swift limits: {} entries per manifest, objects up to {} bytes",
        plan.max_segments,
        limits.max_file_size
    );
    Ok(())
}

fn read_meta_file(path: &Path) -> BTreeMap<String, String> {
    let values = std::fs::read_to_string(path)
        .map(|t| hooks::parse_key_values(&t))
        .unwrap_or_default();
    let _ = std::fs::remove_file(path);
    values
}

/// What `volsnap list` shows.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub container: String,
    /// This host's backups, every datastore, newest first.
    pub backups: Vec<Listed>,
    /// This host's segments that no manifest points to (none removed).
    pub orphans: Vec<Orphan>,
    /// With `[archive]`: the window a `restore --until` can reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::archive::window::Window>,
}

pub fn list(settings: &Settings) -> Result<Listing> {
    let swift = connect(settings)?;
    let all = backups(settings, &swift)?;
    let datastore = settings.datastore.name();
    let oldest = all
        .iter()
        .rfind(|(_, l)| l.datastore.as_deref() == Some(datastore))
        .map(|(n, l)| (l.name.clone(), n.created));
    let backups = all.into_iter().map(|(_, l)| l).collect();
    let orphans = orphans::sweep(settings, &swift, false)
        .map(|sweep| sweep.found)
        .unwrap_or_else(|e| {
            log::warn!("looking for orphan segments failed: {e:#}");
            Vec::new()
        });
    let archive = match settings.archive {
        None => None,
        Some(_) => Some(crate::archive::window::window(
            settings,
            &swift,
            oldest.as_ref().map(|(n, t)| (n.as_str(), *t)),
        )?),
    };
    Ok(Listing {
        container: settings.swift.container.clone(),
        backups,
        orphans,
        archive,
    })
}

/// Which backup: by name, or this host's newest of this datastore.
fn choose(
    settings: &Settings,
    swift: &Swift,
    backup: Option<&str>,
    latest: bool,
) -> Result<String> {
    match (backup, latest) {
        (Some(name), _) => Ok(name.to_string()),
        (None, true) => own_backups(settings, swift)?
            .into_iter()
            .next()
            .map(|(_, l)| l.name)
            .ok_or_else(|| {
                anyhow!(
                    "no volsnap backups of datastore {} of this host in {} (see `volsnap list`)",
                    settings.datastore.name(),
                    settings.swift.container
                )
            }),
        (None, false) => Err(exit::Exit::new(
            exit::USAGE,
            "say which backup: --backup NAME (see `volsnap list`) or --latest",
        )
        .into()),
    }
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub name: String,
    pub verified: stream::Verified,
    pub restored: bool,
}

/// `restore` (through the hook) or, with `into_hook = false`, `verify`.
pub fn restore(
    settings: &Settings,
    backup: Option<&str>,
    latest: bool,
    identity: Option<&Path>,
    into_hook: bool,
    quiet: bool,
) -> Result<RestoreReport> {
    let _lock = RunLock::acquire(&settings.runtime_dir)?;
    if into_hook {
        hooks::check_configured(settings).map_err(anyhow::Error::msg)?;
    }
    let swift = connect(settings)?;
    let container = &settings.swift.container;
    let name = choose(settings, &swift, backup, latest)?;
    let meta = read_meta(&swift, container, &name)?;
    if meta.datastore != settings.datastore.name() && into_hook {
        bail!(
            "{container}/{name} is a {} backup; this host's datastore is {}",
            meta.datastore,
            settings.datastore.name()
        );
    }
    let ids = identities(settings, &meta, identity)?;
    let stored = swift
        .download(container, &name)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("downloading {container}/{name}"))?;
    let label = if into_hook { "restore" } else { "verify" };
    let mut progress = Progress::new(label, quiet);
    let verified = if into_hook {
        let hook = Hook::new(settings, settings.hooks.timeout);
        runtime::ensure_dir(&settings.runtime_dir)?;
        let (running, mut stdin) = hook.spawn_restore(settings.hooks.stream_timeout)?;
        match stream::restore_into(stored, &mut stdin, &meta, ids.as_ref(), &mut progress) {
            Ok(v) => {
                drop(stdin); // only now: the hook may swap the data in
                running
                    .finish()
                    .context("the backup verified, but the hook's restore failed")?;
                v
            }
            Err(e) => {
                // Killed before its stdin closes: the hook never sees a
                // complete stream, and swaps nothing in. One that stopped
                // reading has exited, or is exiting, with its own reason.
                let hook = running.exit_or_kill(HOOK_EXIT_GRACE / 4);
                drop(stdin);
                let e = match hook {
                    None => e.context(format!("restore of {container}/{name} failed; the hook was stopped before it swapped anything in")),
                    Some(Err(hook)) => hook.context(format!("{e:#}")).context(format!("restore of {container}/{name} failed; the hook exited before the end of the stream")),
                    Some(Ok(())) => e.context(format!("restore of {container}/{name} failed, and the hook exited 0 before the end of the stream: it may have restored an incomplete stream; check the datastore")),
                };
                return Err(e);
            }
        }
    } else {
        stream::restore_into(
            stored,
            &mut std::io::sink(),
            &meta,
            ids.as_ref(),
            &mut progress,
        )
        .with_context(|| format!("verify of {container}/{name} failed"))?
    };
    Ok(RestoreReport {
        name,
        verified,
        restored: into_hook,
    })
}

/// What `volsnap prune` did.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub deleted: Vec<String>,
    pub orphans: Sweep,
}

pub fn prune(settings: &Settings, dry_run: bool) -> Result<PruneReport> {
    let swift = connect(settings)?;
    let deleted = prune_with(settings, &swift, dry_run)?;
    let orphans = orphans::sweep(settings, &swift, !dry_run)?;
    Ok(PruneReport {
        dry_run,
        deleted,
        orphans,
    })
}

/// Finds this host's orphan segments and deletes those whose run is over:
/// for `volsnap check`.
pub fn sweep_orphans(settings: &Settings, swift: &Swift) -> Result<Sweep> {
    orphans::sweep(settings, swift, true)
}

/// Applies retention to this host's backups of this datastore.
fn prune_with(settings: &Settings, swift: &Swift, dry_run: bool) -> Result<Vec<String>> {
    let backups = own_backups(settings, swift)?;
    let times: Vec<crate::time::Timestamp> = backups.iter().map(|(n, _)| n.created).collect();
    let mut deleted = Vec::new();
    for i in retention::to_delete(&settings.retention, &times) {
        let name = &backups[i].1.name;
        if !dry_run {
            swift
                .delete_tree(&settings.swift.container, name)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("deleting {name} with its segments"))?;
            log::info!("retention: deleted {name}");
        }
        deleted.push(name.clone());
    }
    if settings.archive.is_some() {
        let doomed = retention::to_delete(&settings.retention, &times);
        let oldest_kept = (0..backups.len()).rev().find(|i| !doomed.contains(i));
        if let Some(i) = oldest_kept {
            deleted.extend(crate::archive::retention::prune(
                settings,
                swift,
                &backups[i].1.name,
                dry_run,
            )?);
        }
    }
    Ok(deleted)
}
