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
                let rows: Vec<Row> = agent::cinder::list(&cinder)?
                    .into_iter()
                    .map(|s| Row {
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
                    if rows.is_empty() {
                        println!("no volsnap snapshots of this host");
                        return;
                    }
                    println!(
                        "{:<36}  {:<36}  {:<26}  {:<11}  {:>5}  STATUS",
                        "SNAPSHOT", "VOLUME", "CREATED", "CONSISTENCY", "GiB"
                    );
                    for r in &rows {
                        println!(
                            "{:<36}  {:<36}  {:<26}  {:<11}  {:>5}  {}",
                            r.id,
                            r.volume_id,
                            r.created_at.as_deref().unwrap_or("-"),
                            r.consistency.as_deref().unwrap_or("-"),
                            r.size_gib,
                            r.status
                        );
                    }
                })?;
                Ok(exit::SUCCESS)
            }
            Strategy::Swift => agent::swift::list_command(&settings, ctx),
        }
    }
}
