//! `volsnap verify`: a Swift backup downloads, decrypts, decompresses and
//! matches its recorded SHA-256 and size, without restoring anything.

use std::path::PathBuf;

use anyhow::Result;

use super::Context;
use crate::agent;
use crate::config::Strategy;
use crate::exit::{self, Exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup (manifest name) to verify
    #[arg(long, value_name = "NAME", conflicts_with = "latest")]
    pub backup: Option<String>,

    /// Verify this host's newest backup of the configured datastore
    #[arg(long)]
    pub latest: bool,

    /// The age identity file to decrypt with (default: swift.age_identity_file)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        if settings.strategy == Strategy::Cinder {
            return Err(Exit::new(
                exit::USAGE,
                "verify reads Swift backups; a Cinder snapshot's state is Cinder's to report (see `volsnap list`), and `volsnap restore --snapshot` proves it restores",
            )
            .into());
        }
        let report = agent::swift::restore(
            &settings,
            self.backup.as_deref(),
            self.latest,
            self.identity.as_deref(),
            false,
            ctx.quiet,
        )?;
        super::restore::print_swift(ctx, &report)?;
        Ok(exit::SUCCESS)
    }
}
