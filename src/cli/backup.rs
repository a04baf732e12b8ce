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
                let options = agent::cinder::Options {
                    dry_run,
                    sys_root: self.sys_root,
                };
                agent::cinder::backup(&settings, &options, stop).and_then(|report| {
                    freeze = report.freeze_ms.map(Duration::from_millis);
                    ctx.print(&report, || report.print_human())?;
                    Ok(report.exit_code())
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
