//! `volsnap restore`: a Cinder snapshot into a new volume, or a Swift backup
//! through the datastore hook; with `--until`, recovery to a time
//! ([`crate::archive::pitr`]).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Context;
use crate::agent;
use crate::config::Strategy;
use crate::exit::{self, Exit};

/// How long a new volume may take to become `available`.
const VOLUME_WAIT: Duration = Duration::from_secs(1800);

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("cinder").args(["snapshot", "cinder_backup"]).multiple(false))]
pub struct Args {
    /// Cinder: the snapshot to turn into a new volume. With --until: the
    /// snapshot the mounted volume holding --datadir was made from
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,

    /// Cinder: the Cinder backup (`[cinder] backup`) to restore into a new volume
    #[arg(long, value_name = "ID", conflicts_with = "snapshot")]
    pub cinder_backup: Option<String>,

    /// Cinder: the new volume's name (default: volsnap-restore-SNAPSHOT or
    /// volsnap-restore-BACKUP)
    #[arg(
        long,
        value_name = "NAME",
        requires = "cinder",
        conflicts_with = "until"
    )]
    pub name: Option<String>,

    /// Swift: the backup (manifest name) to restore
    #[arg(long, value_name = "NAME", conflicts_with_all = ["latest", "snapshot", "cinder_backup"])]
    pub backup: Option<String>,

    /// Swift: restore this host's newest backup of the configured datastore
    #[arg(long, conflicts_with_all = ["snapshot", "cinder_backup"])]
    pub latest: bool,

    /// Cinder: restore a snapshot that is not labelled good (one a killed or
    /// failed run left, whose image may be of a thawed filesystem)
    #[arg(long, requires = "cinder", conflicts_with = "until")]
    pub force: bool,

    /// PostgreSQL with [archive]: recover to this time (RFC 3339, e.g.
    /// 2026-12-03T17:04:05Z) in --datadir, replaying the archived WAL. The
    /// base: with --snapshot ID, the data directory already in --datadir,
    /// on a volume made of that snapshot (good, of this host, taken before
    /// TIME; checked in Cinder and against its wal_lsn); else the newest
    /// Swift base backup finished before TIME, extracted into --datadir.
    /// MariaDB: the same bases (the snapshot checked against its
    /// binlog_file/binlog_pos), and the archived binary logs are replayed
    /// here, up to TIME's whole second (their events carry whole seconds)
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "datadir",
          conflicts_with_all = ["backup", "latest", "cinder_backup"])]
    pub until: Option<crate::time::Timestamp>,

    /// With --until: the data directory. A Swift base goes into it (absent or
    /// empty); a snapshot base is in it (mounted, never started). The WAL goes
    /// beside it into DIR.volsnap-wal. Start PostgreSQL on it to replay and promote.
    /// MariaDB: replayed already (by a temporary mariadbd reading no option
    /// file with a snapshot base; the binary logs fetched into
    /// DIR.volsnap-binlog); start MariaDB on it
    #[arg(long, value_name = "DIR", requires = "until")]
    pub datadir: Option<std::path::PathBuf>,

    /// Swift: the age identity file to decrypt with, the archived WAL's too
    /// (default: swift.age_identity_file)
    #[arg(long, value_name = "FILE", conflicts_with = "cinder_backup")]
    pub identity: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Restored {
    volume_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    snapshot_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_id: Option<String>,
    name: String,
    size_gib: u64,
    status: String,
}

fn parse_time(text: &str) -> Result<crate::time::Timestamp, String> {
    text.parse()
        .map_err(|e| format!("not an RFC 3339 time with an offset (2026-12-03T17:04:05Z): {e}"))
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        if let (Some(until), Some(datadir), crate::config::Datastore::Mysql) =
            (self.until, &self.datadir, settings.datastore)
        {
            let report = crate::archive::pitr_mariadb::run(
                &settings,
                until,
                datadir,
                self.snapshot.as_deref(),
                self.identity.as_deref(),
                ctx.quiet,
            )?;
            ctx.print(&report, || {
                println!(
                    "{}: base {} ({}) and {} binary logs from {} position {} replayed to {} \
                     (UTC); start MariaDB on it",
                    report.datadir,
                    report.base,
                    report.base_kind,
                    report.binlogs_fetched,
                    report.start_file,
                    report.start_position,
                    report.stop_datetime
                );
            })?;
            return Ok(exit::SUCCESS);
        }
        if let (Some(until), Some(datadir)) = (self.until, &self.datadir) {
            let report = crate::archive::pitr::run(
                &settings,
                until,
                datadir,
                self.snapshot.as_deref(),
                self.identity.as_deref(),
                ctx.quiet,
            )?;
            ctx.print(&report, || {
                println!(
                    "{}: base {} ({}) and {} WAL segments ({} to {}) for recovery to {}; start \
                     PostgreSQL on it to replay and promote",
                    report.datadir,
                    report.base,
                    report.base_kind,
                    report.recovery.segments_fetched,
                    report.recovery.first_segment,
                    report.recovery.last_segment,
                    report.until
                );
            })?;
            return Ok(exit::SUCCESS);
        }
        match settings.strategy {
            Strategy::Cinder => {
                if self.identity.is_some() && self.snapshot.is_some() {
                    return Err(Exit::new(
                        exit::USAGE,
                        "--identity decrypts Swift backups and archived WAL: it goes with --backup, --latest or --until, not with --snapshot alone",
                    )
                    .into());
                }
                if let Some(id) = self.cinder_backup {
                    return from_backup(ctx, &settings, &id, self.name, self.force);
                }
                let Some(snapshot_id) = self.snapshot else {
                    return Err(Exit::new(
                        exit::USAGE,
                        "the Cinder strategy restores with --snapshot ID or --cinder-backup ID (see `volsnap list`)",
                    )
                    .into());
                };
                let cinder = agent::cinder::connect(&settings)?;
                let snapshot = cinder
                    .snapshot(&snapshot_id)
                    .with_context(|| format!("snapshot {snapshot_id}"))?;
                if snapshot.status != "available" {
                    anyhow::bail!(
                        "snapshot {snapshot_id} is {}, not available",
                        snapshot.status
                    );
                }
                let state = agent::cinder::runs::state(&snapshot);
                if state != agent::cinder::runs::State::Good {
                    let label = snapshot
                        .metadata
                        .get("consistency")
                        .map_or("none", String::as_str);
                    if !self.force {
                        anyhow::bail!(
                            "snapshot {snapshot_id} is not a good backup ({}: consistency {label:?}, freeze_ms {}); \
                             its image may be of a filesystem that was no longer frozen; --force restores it anyway",
                            state.name(),
                            snapshot.metadata.get("freeze_ms").map_or("missing", String::as_str)
                        );
                    }
                    log::warn!("restoring snapshot {snapshot_id} although it is {} (consistency {label:?}): --force", state.name());
                }
                let name = self
                    .name
                    .unwrap_or_else(|| format!("volsnap-restore-{snapshot_id}"));
                let volume =
                    cinder.volume_from_snapshot(&snapshot, &name, Instant::now() + VOLUME_WAIT)?;
                let done = Restored {
                    volume_id: volume.id.clone(),
                    backup_id: None,
                    snapshot_id,
                    name,
                    size_gib: volume.size,
                    status: volume.status.clone(),
                };
                ctx.print(&done, || {
                    println!("{}", done.volume_id);
                    log::info!("volume {} ({}, {} GiB) restored from snapshot {}: attach it to a server to use it", done.volume_id, done.name, done.size_gib, done.snapshot_id);
                })?;
                Ok(exit::SUCCESS)
            }
            Strategy::Swift => {
                if self.snapshot.is_some() || self.cinder_backup.is_some() {
                    return Err(Exit::new(exit::USAGE, "--snapshot and --cinder-backup are for the Cinder strategy; the Swift strategy restores with --backup NAME or --latest").into());
                }
                let report = agent::swift::restore(
                    &settings,
                    self.backup.as_deref(),
                    self.latest,
                    self.identity.as_deref(),
                    true,
                    ctx.quiet,
                )?;
                print_swift(ctx, &report)?;
                Ok(exit::SUCCESS)
            }
        }
    }
}

/// A Cinder backup into a new volume (Cinder creates it, `restoring-backup`
/// until the copy is done), waited for until `available`.
fn from_backup(
    ctx: &Context,
    settings: &crate::config::Settings,
    id: &str,
    name: Option<String>,
    force: bool,
) -> Result<u8> {
    let cinder = agent::cinder::connect(settings)?;
    let api = cinder.backup_api()?;
    let backup = cinder
        .backup(api, id)
        .with_context(|| format!("backup {id}"))?;
    if backup.status != "available" {
        anyhow::bail!("backup {id} is {}, not available", backup.status);
    }
    let state = agent::cinder::backups::state(&backup);
    if state != agent::cinder::runs::State::Good {
        if !force {
            anyhow::bail!(
                "backup {id} is not a good volsnap backup ({}: consistency {:?}); --force restores it anyway",
                state.name(),
                agent::cinder::backups::tags(&backup)
                    .get("consistency")
                    .map_or("none", String::as_str)
            );
        }
        log::warn!(
            "restoring backup {id} although it is {}: --force",
            state.name()
        );
    }
    let name = name.unwrap_or_else(|| format!("volsnap-restore-{id}"));
    let volume_id = cinder
        .restore_backup(id, &name)
        .with_context(|| format!("cannot restore backup {id}"))?;
    log::info!("restoring backup {id} into volume {volume_id} ({name})");
    let volume = cinder
        .wait_volume(
            &volume_id,
            crate::openstack::cinder::Target::Status("available"),
            Instant::now() + VOLUME_WAIT,
        )?
        .context("the restored volume vanished")?;
    let done = Restored {
        volume_id: volume.id.clone(),
        snapshot_id: String::new(),
        backup_id: Some(id.to_string()),
        name,
        size_gib: volume.size,
        status: volume.status.clone(),
    };
    ctx.print(&done, || {
        println!("{}", done.volume_id);
        log::info!(
            "volume {} ({}, {} GiB) restored from backup {id}: attach it to a server to use it",
            done.volume_id,
            done.name,
            done.size_gib
        );
    })?;
    Ok(exit::SUCCESS)
}

/// A Swift restore's or verify's result.
pub(super) fn print_swift(ctx: &Context, report: &agent::swift::RestoreReport) -> Result<()> {
    ctx.print(report, || {
        let verb = if report.restored {
            "restored"
        } else {
            "verified"
        };
        println!(
            "{verb} {}: {}, sha256 {} matches",
            report.name,
            crate::config::human_bytes(report.verified.plain_bytes),
            report.verified.sha256
        );
    })
}
