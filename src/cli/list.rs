//! `volsnap list`: this host's backups, newest first.

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::agent;
use crate::config::Strategy;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct Row {
    /// `snapshot`, or `backup` (a Cinder backup of a run's snapshot).
    kind: &'static str,
    id: String,
    /// `good` (a backup), `in-progress` (its run is going) or `incomplete`
    /// (a killed or failed run left it: never a backup).
    state: &'static str,
    run: Option<String>,
    name: Option<String>,
    volume_id: String,
    mount: Option<String>,
    created_at: Option<String>,
    consistency: Option<String>,
    size_gib: u64,
    status: String,
    /// Backups: full or incremental, the snapshot copied, the parent (the
    /// backup before it in the volume's chain), Cinder's object count.
    #[serde(skip_serializing_if = "Option::is_none")]
    incremental: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_count: Option<u64>,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        match settings.strategy {
            Strategy::Cinder => {
                let cinder = agent::cinder::connect(&settings)?;
                // What killed runs left is removed first (without waiting
                // for one still being made), then the rest is shown.
                let cleanup = agent::cinder::runs::clean(
                    &cinder,
                    &settings.runtime_dir,
                    std::time::Duration::ZERO,
                )?;
                let mut removed = cleanup.removed;
                let mut backups = Vec::new();
                if settings.cinder.backup.mode != crate::config::BackupMode::Off {
                    let (gone, _) = agent::cinder::backups::clean(
                        &cinder,
                        &settings.runtime_dir,
                        std::time::Duration::ZERO,
                    )?;
                    removed.extend(gone);
                    let api = cinder.backup_api()?;
                    backups = backup_rows(agent::cinder::backups::list(&cinder, api)?);
                }
                let mut rows: Vec<Row> = agent::cinder::list(&cinder)?
                    .into_iter()
                    .map(|s| Row {
                        kind: "snapshot",
                        incremental: None,
                        snapshot_id: None,
                        parent: None,
                        object_count: None,
                        state: agent::cinder::runs::state(&s).name(),
                        run: s.metadata.get("volsnap_run").cloned(),
                        consistency: s.metadata.get("consistency").cloned(),
                        mount: s.metadata.get("mount").cloned(),
                        id: s.id,
                        name: s.name,
                        volume_id: s.volume_id,
                        created_at: s.created_at,
                        size_gib: s.size,
                        status: s.status,
                    })
                    .collect();
                let shown_backups = backups.len();
                rows.extend(backups);
                ctx.print(&rows, || {
                    for id in &removed {
                        println!("removed {id}: a killed or failed run left it");
                    }
                    if rows.is_empty() {
                        println!("no volsnap snapshots of this host");
                        return;
                    }
                    println!(
                        "{:<36}  {:<36}  {:<26}  {:<11}  {:<11}  {:>5}  STATUS",
                        "SNAPSHOT", "VOLUME", "CREATED", "STATE", "CONSISTENCY", "GiB"
                    );
                    for r in rows.iter().filter(|r| r.kind == "snapshot") {
                        println!(
                            "{:<36}  {:<36}  {:<26}  {:<11}  {:<11}  {:>5}  {}",
                            r.id,
                            r.volume_id,
                            r.created_at.as_deref().unwrap_or("-"),
                            r.state,
                            r.consistency.as_deref().unwrap_or("-"),
                            r.size_gib,
                            r.status
                        );
                    }
                    if shown_backups > 0 {
                        print_backups(rows.iter().filter(|r| r.kind == "backup"));
                    }
                })?;
                Ok(exit::SUCCESS)
            }
            Strategy::Swift => {
                let listing = agent::swift::list(&settings)?;
                ctx.print(&listing, || print_swift(&listing))?;
                Ok(exit::SUCCESS)
            }
        }
    }
}

fn print_swift(listing: &agent::swift::Listing) {
    if listing.backups.is_empty() {
        println!("no volsnap backups of this host in {}", listing.container);
    } else {
        println!(
            "{:<44}  {:<20}  {:>10}  {:<10}  {:<11}  ENCRYPTION",
            "BACKUP", "CREATED", "SIZE", "DATASTORE", "COMPRESSION"
        );
        for r in &listing.backups {
            println!(
                "{:<44}  {:<20}  {:>10}  {:<10}  {:<11}  {}",
                r.name,
                r.created,
                r.size.map_or("?".into(), crate::config::human_bytes),
                r.datastore.as_deref().unwrap_or("?"),
                r.compression.as_deref().unwrap_or("?"),
                r.encryption.as_deref().unwrap_or("?")
            );
        }
    }
    for orphan in &listing.orphans {
        println!("{}", orphan.describe());
    }
    if let Some(w) = &listing.archive {
        match (&w.from, &w.to) {
            (Some(from), Some(to)) => println!(
                "archived {}: restore --until reaches from {from} to {to} ({} to {})",
                w.log,
                w.first_segment.as_deref().unwrap_or("?"),
                w.last_segment.as_deref().unwrap_or("?")
            ),
            _ => println!(
                "archived {}: {} file(s); no window: {}",
                w.log,
                w.archived_files,
                w.note.as_deref().unwrap_or("?")
            ),
        }
        if let Some(gap) = &w.gap {
            println!(
                "archived {}: gap at {gap}: later files are archived, this one is missing",
                w.log
            );
        }
    }
}

/// Backups newest first; each incremental's parent is the backup before it
/// of the same volume (Cinder chains onto the volume's latest backup).
fn backup_rows(oldest_first: Vec<crate::openstack::cinder_backups::Backup>) -> Vec<Row> {
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    let mut rows: Vec<Row> = oldest_first
        .into_iter()
        .map(|b| {
            let tags = agent::cinder::backups::tags(&b);
            let parent = if b.is_incremental {
                last.get(&b.volume_id).cloned()
            } else {
                None
            };
            last.insert(b.volume_id.clone(), b.id.clone());
            Row {
                kind: "backup",
                state: agent::cinder::backups::state(&b).name(),
                run: tags.get("volsnap_run").cloned(),
                consistency: tags.get("consistency").cloned(),
                mount: tags.get("mount").cloned(),
                incremental: Some(b.is_incremental),
                snapshot_id: b.snapshot_id,
                parent,
                object_count: b.object_count,
                id: b.id,
                name: b.name,
                volume_id: b.volume_id,
                created_at: b.created_at,
                size_gib: b.size,
                status: b.status,
            }
        })
        .collect();
    rows.reverse();
    rows
}

fn print_backups<'a>(rows: impl Iterator<Item = &'a Row>) {
    println!();
    println!(
        "{:<36}  {:<36}  {:<26}  {:<11}  {:<11}  {:>5}  {:<11}  {:<9}  PARENT",
        "BACKUP", "SNAPSHOT", "CREATED", "STATE", "CONSISTENCY", "GiB", "TYPE", "STATUS"
    );
    for r in rows {
        println!(
            "{:<36}  {:<36}  {:<26}  {:<11}  {:<11}  {:>5}  {:<11}  {:<9}  {}",
            r.id,
            r.snapshot_id.as_deref().unwrap_or("-"),
            r.created_at.as_deref().unwrap_or("-"),
            r.state,
            r.consistency.as_deref().unwrap_or("-"),
            r.size_gib,
            if r.incremental == Some(true) {
                "incremental"
            } else {
                "full"
            },
            r.status,
            r.parent.as_deref().unwrap_or("-")
        );
    }
}
