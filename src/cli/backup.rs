//! `volsnap backup`: one backup with the configured strategy.

use std::path::PathBuf;

use anyhow::Result;

use super::Context;
use crate::agent;
use crate::config::Strategy;

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
        let stop = agent::cinder::stop_flag()?;
        match settings.strategy {
            Strategy::Cinder => {
                let options = agent::cinder::Options {
                    dry_run: self.dry_run,
                    sys_root: self.sys_root,
                };
                let report = agent::cinder::backup(&settings, &options, stop)?;
                ctx.print(&report, || report.print_human())?;
                Ok(report.exit_code())
            }
            Strategy::Swift => agent::swift::backup_command(&settings, ctx, self.dry_run, stop),
        }
    }
}
