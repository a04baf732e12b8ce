//! `volsnap archive`: ship the WAL spool to Swift (the volsnap-archive service).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use super::Context;
use crate::archive::ship;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ship what is in the spool now and exit (1 if anything could not be
    /// shipped), instead of running until SIGTERM
    #[arg(long)]
    pub once: bool,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(signal, stop.clone())?;
        }
        let report = ship::run(&settings, self.once, stop)?;
        ctx.print(&report, || {
            log::info!(
                "archive: {} shipped, {} found in Swift already, {} failed, {} waiting{}",
                report.uploaded,
                report.already_there,
                report.failed,
                report.waiting,
                report
                    .last_shipped
                    .as_ref()
                    .map_or(String::new(), |l| format!("; last {l}"))
            );
        })?;
        Ok(exit::SUCCESS)
    }
}
