//! `volsnap prune`: apply the `[retention]` policy to volsnap's own backups.

use anyhow::Result;

use super::Context;
use crate::agent;
use crate::config::Strategy;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        if !settings.retention.is_set() {
            anyhow::bail!(
                "no retention policy in {}: set keep_last, keep_daily or keep_weekly in [retention]",
                settings.path.display()
            );
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let print_deleted = |kind: &str, deleted: &[String]| {
            for d in deleted {
                println!("{verb} {kind} {d}");
            }
            println!("{verb} {} {kind}(s)", deleted.len());
        };
        match settings.strategy {
            Strategy::Cinder => {
                let cinder = agent::cinder::connect(&settings)?;
                if !self.dry_run {
                    let cleanup = agent::cinder::runs::clean(
                        &cinder,
                        &settings.runtime_dir,
                        std::time::Duration::from_secs(60),
                    )?;
                    for id in &cleanup.removed {
                        log::info!("removed snapshot {id}: a killed or failed run left it");
                    }
                    if settings.cinder.backup.mode != crate::config::BackupMode::Off {
                        let (removed, _) = agent::cinder::backups::clean(
                            &cinder,
                            &settings.runtime_dir,
                            std::time::Duration::from_secs(60),
                        )?;
                        for id in &removed {
                            log::info!("removed backup {id}: a killed or failed run left it");
                        }
                    }
                }
                let pruned = agent::cinder::prune(&settings, &cinder, self.dry_run)?;
                let deleted = pruned.all();
                ctx.print(
                    &serde_json::json!({"dry_run": self.dry_run, "deleted": deleted}),
                    || {
                        print_deleted("snapshot", &pruned.snapshots);
                        if !pruned.backups.is_empty() {
                            print_deleted("backup", &pruned.backups);
                        }
                    },
                )?;
            }
            Strategy::Swift => {
                let report = agent::swift::prune(&settings, self.dry_run)?;
                ctx.print(&report, || {
                    print_deleted("backup", &report.deleted);
                    super::print_orphans("", &report.orphans);
                })?;
            }
        }
        Ok(exit::SUCCESS)
    }
}
