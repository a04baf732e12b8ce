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
                let rows: Vec<Row> = agent::cinder::list(&cinder)?
                    .into_iter()
                    .map(|s| Row {
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
                ctx.print(&rows, || {
                    for id in &cleanup.removed {
                        println!("removed snapshot {id}: a killed or failed run left it");
                    }
                    if rows.is_empty() {
                        println!("no volsnap snapshots of this host");
                        return;
                    }
                    println!(
                        "{:<36}  {:<36}  {:<26}  {:<11}  {:<11}  {:>5}  STATUS",
                        "SNAPSHOT", "VOLUME", "CREATED", "STATE", "CONSISTENCY", "GiB"
                    );
                    for r in &rows {
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
                "archived WAL: restore --until reaches from {from} to {to} (segments {} to {})",
                w.first_segment.as_deref().unwrap_or("?"),
                w.last_segment.as_deref().unwrap_or("?")
            ),
            _ => println!(
                "archived WAL: {} file(s); no window: {}",
                w.archived_files,
                w.note.as_deref().unwrap_or("?")
            ),
        }
        if let Some(gap) = &w.gap {
            println!(
                "archived WAL: gap at {gap}: later segments are archived, this one is missing"
            );
        }
    }
}
