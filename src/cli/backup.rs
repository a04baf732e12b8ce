//! `volsnap backup`: one backup with the configured strategy.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use super::Context;
use crate::config::{human_bytes, Strategy};
use crate::metrics::{self, Outcome};
use crate::{agent, exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do everything up to the hook (config, checks, authentication,
    /// volumes) and print the plan; lock, freeze and create nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Where sysfs is, for volume discovery
    #[arg(long, hide = true, default_value = "/sys")]
    pub sys_root: PathBuf,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        if let Some(path) = &settings.log_file {
            crate::logging::to_file(path)?;
        }
        let started = Instant::now();
        let dry_run = self.dry_run;
        let stop = agent::cinder::stop_flag()?;
        // What the metrics file says beyond the exit code.
        let mut freeze = None;
        let mut sizes = None;
        let result = match settings.strategy {
            Strategy::Cinder => {
                cinder(&settings, &self.sys_root, dry_run, ctx, stop).map(|(code, frozen)| {
                    freeze = frozen.map(Duration::from_millis);
                    code
                })
            }
            Strategy::Swift => {
                agent::swift::backup(&settings, dry_run, ctx.quiet, stop).and_then(|report| {
                    sizes = Some((report.size, report.stored_size));
                    ctx.print(&report, || print_swift(&report))?;
                    Ok(exit::SUCCESS)
                })
            }
        };
        let exit_code = match &result {
            Ok(code) => *code,
            Err(e) => exit::code_for(e),
        };
        // Not for a dry run; and a run turned away by the lock leaves the
        // report to the run that holds it.
        if let Some(path) = settings.metrics_file.as_deref() {
            if !dry_run && exit_code != exit::LOCKED {
                let outcome = Outcome {
                    strategy: settings.strategy,
                    datastore: settings.datastore,
                    exit_code,
                    ended: SystemTime::now(),
                    duration: started.elapsed(),
                    freeze,
                    plain_bytes: sizes.map(|(plain, _)| plain),
                    stored_bytes: sizes.map(|(_, stored)| stored),
                };
                if let Err(e) = metrics::write(path, &outcome) {
                    log::warn!("metrics_file {}: not written: {e}", path.display());
                }
            }
        }
        result
    }
}

/// The Cinder strategy: the plan (all `--dry-run` does: it locks nothing),
/// then the backup. Returns the exit code and a backup's freeze window.
fn cinder(
    settings: &crate::config::Settings,
    sys_root: &std::path::Path,
    dry_run: bool,
    ctx: &Context,
    stop: &'static std::sync::atomic::AtomicBool,
) -> Result<(u8, Option<u64>)> {
    let client = agent::cinder::connect(settings)?;
    let plan = agent::cinder::Plan::resolve(settings, &client, sys_root)?;
    if dry_run {
        let lock = crate::runtime::lock_holder(&settings.runtime_dir);
        let value = serde_json::json!({
            "strategy": "cinder",
            "dry_run": true,
            "plan": &plan,
            "lock_holder_pid": lock,
        });
        ctx.print(&value, || {
            println!("dry run: nothing was locked, frozen or created. The plan:");
            for v in &plan.volumes {
                println!(
                    "  freeze {}  snapshot volume {} ({})",
                    v.mount.display(),
                    v.volume_id,
                    v.status
                );
            }
            println!(
                "  hook {} (datastore {}), max_freeze {} ms",
                plan.hook.display(),
                plan.datastore,
                plan.max_freeze_ms
            );
            if let Some(pid) = lock {
                println!("  a volsnap run holds the lock now (pid {pid}): a backup would exit 75");
            }
        })?;
        return Ok((exit::SUCCESS, None));
    }
    let report = agent::cinder::backup(settings, &client, &plan, stop)?;
    ctx.print(&report, || print_cinder(&report))?;
    Ok((report.exit_code(), Some(report.freeze_ms)))
}

fn print_cinder(report: &agent::cinder::Report) {
    println!(
        "backup done: {} snapshot(s), consistency {}, frozen {} ms, database held {} ms, total {} ms",
        report.snapshots.len(),
        report.consistency.name(),
        report.freeze_ms,
        report.lock_ms,
        report.total_ms
    );
    for s in &report.snapshots {
        println!(
            "  {}  volume {}  snapshot {}  {}",
            s.mount.display(),
            s.volume_id,
            s.id,
            s.status
        );
    }
    for b in &report.backups {
        println!(
            "  {}  {} backup {} of snapshot {}  {}{}",
            b.mount.display(),
            if b.incremental { "incremental" } else { "full" },
            b.id,
            b.snapshot_id,
            b.status,
            if b.snapshot_deleted {
                " (snapshot deleted: keep_snapshot = false)"
            } else {
                ""
            }
        );
    }
    if let Some(e) = &report.backup_error {
        println!("  BACKUP FAILED (exit 4; the snapshots stay): {e}");
    }
    if !report.removed_leftovers.is_empty() {
        println!(
            "  removed {} snapshot(s) or backup(s) that killed or failed runs left: {}",
            report.removed_leftovers.len(),
            report.removed_leftovers.join(", ")
        );
    }
    if !report.pruned.is_empty() {
        println!(
            "  retention deleted {} older snapshot(s) or backup(s): {}",
            report.pruned.len(),
            report.pruned.join(", ")
        );
    }
}

fn print_swift(report: &agent::swift::BackupReport) {
    let encryption = if report.encryption.is_empty() {
        "not encrypted".to_string()
    } else if report.dry_run {
        format!("age to {}", report.encryption.join(", "))
    } else {
        "age-encrypted".to_string()
    };
    if report.dry_run {
        println!(
            "dry run: would stream hook {} backup into {}/{} ({} segments, {}, {encryption})",
            report.datastore,
            report.container,
            report.name,
            report.segments_container,
            report.compression,
        );
        if let Some(pid) = report.lock_holder_pid {
            println!("  a volsnap run holds the lock now (pid {pid}): a backup would exit 75");
        }
    } else {
        println!(
            "backup done: {}/{} — {} plain, {} stored in {} segment(s), {}, {encryption}, {:.1} MiB/s, {} ms",
            report.container,
            report.name,
            human_bytes(report.size),
            human_bytes(report.stored_size),
            report.segments,
            report.compression,
            report.bytes_per_sec / (1 << 20) as f64,
            report.total_ms
        );
        println!("  sha256 {}", report.sha256);
    }
    if !report.pruned.is_empty() {
        println!(
            "  retention deleted {} older backup(s): {}",
            report.pruned.len(),
            report.pruned.join(", ")
        );
    }
    super::print_orphans("  ", &report.orphans);
}
